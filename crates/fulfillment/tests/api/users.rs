//! Who is asking: numbers as doubles, unknown and missing users, unknown intents.
//! All of them are answered (200) with something helpful, never an error.

use serde_json::json;
use tollgate_fulfillment::answers::{HELP, SIGN_IN};

use crate::helpers::*;

const UNKNOWN_USER: &str = "I couldn't find a billing account for you. If you subscribed a moment ago, give it a minute; otherwise you can choose a plan here: https://app.example.com/billing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_arrive_as_doubles() {
    let mut entitlements = Entitlements::start().await;
    let customer = entitlements
        .customer("1042", "numbers@example.com", "none", "free")
        .await;
    entitlements.set_balance(customer, 250).await;
    let app = Fulfillment::start(Options::new(entitlements.url(), None)).await;

    // A @sys.number user id and amount, as Struct doubles.
    let es = app
        .ask(&es_request(
            "billing.credits",
            None,
            json!({ "userId": 1042.0, "amount": 500.0 }),
        ))
        .await;
    assert_eq!(
        es_text(&es),
        "You have 250 credits. That's not enough for 500: you need 250 more."
    );
    assert_eq!(own_context(&es), json!({ "user_id": "1042" }));

    let cx = app
        .ask(&cx_request(
            "billing.credits",
            json!({ "user_id": 1042.0, "amount": 200.0 }),
        ))
        .await;
    assert_eq!(cx_text(&cx), "You have 250 credits. That's enough for 200.");

    // The same id in the original request's payload, as a number at the top level.
    let mut payload = es_request("billing.status", None, json!({}));
    payload["originalDetectIntentRequest"]["payload"] = json!({ "userId": 1042.0 });
    assert_eq!(
        es_text(&app.ask(&payload).await),
        "You don't have a subscription, so you're on the Free plan. Ask me how to upgrade if you'd like more."
    );

    // A fractional "id" is not a user: asked to sign in, not looked up.
    let fractional = app
        .ask(&cx_request("billing.credits", json!({ "user_id": 1042.5 })))
        .await;
    assert_eq!(cx_text(&fractional), SIGN_IN);
    app.stop().await;
    entitlements.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_missing_users_and_unknown_intents_get_helpful_answers() {
    let mut entitlements = Entitlements::start().await;
    let billing = BillingApi::start(&entitlements).await;
    let app = Fulfillment::start(Options::new(entitlements.url(), Some(&billing))).await;

    // Unknown user, by email (ES) and by id (CX), for every intent but upgrade.
    for action in [
        "billing.status",
        "billing.features",
        "billing.credits",
        "billing.manage",
    ] {
        let es = app
            .ask(&es_request(
                action,
                Some(json!({ "email": "nobody@example.com" })),
                json!({}),
            ))
            .await;
        assert_eq!(es_text(&es), UNKNOWN_USER, "{action}");
        assert_eq!(es["payload"]["tollgate"]["outcome"], "unknown_user");
        assert!(es.get("outputContexts").is_none(), "{es}");
        let cx = app
            .ask(&cx_request(action, json!({ "user_id": "u_nobody" })))
            .await;
        assert_eq!(cx_text(&cx), UNKNOWN_USER, "{action}");
        assert!(cx.get("sessionInfo").is_none(), "{cx}");
    }
    let feature = app
        .ask(&cx_request(
            "billing.features",
            json!({ "email": "nobody@example.com", "feature": "sso" }),
        ))
        .await;
    assert_eq!(cx_text(&feature), UNKNOWN_USER);

    // A new user known by id may still check out (billing creates the customer);
    // one known only by an unknown email may not.
    billing.next_customer("u_new");
    let checkout = billing.next_checkout("cs_test_pro_monthly_u_new");
    let new_user = app
        .ask(&cx_request(
            "billing.upgrade",
            json!({ "user_id": "u_new" }),
        ))
        .await;
    assert_eq!(
        cx_text(&new_user),
        format!("Here is your checkout link for Pro monthly: {checkout}")
    );
    let by_email = app
        .ask(&es_request(
            "billing.upgrade",
            Some(json!({ "email": "nobody@example.com" })),
            json!({}),
        ))
        .await;
    assert_eq!(es_text(&by_email), UNKNOWN_USER);
    // Only the new user's checkout reached billing, which created their Stripe customer.
    assert_eq!(
        billing.stripe_posts(),
        vec![
            (
                "/v1/customers".to_string(),
                json!({ "metadata[user_id]": "u_new" })
            ),
            (
                "/v1/checkout/sessions".to_string(),
                json!({
                    "customer": "cus_u_new",
                    "client_reference_id": "u_new",
                    "mode": "subscription",
                    "line_items[0][price]": "price_pro_monthly",
                    "metadata[user_id]": "u_new",
                })
            ),
        ]
    );

    // No user at all: nothing in the payload, parameters or contexts.
    let es = app
        .ask(&es_request("billing.status", None, json!({})))
        .await;
    assert_eq!(es_text(&es), SIGN_IN);
    assert_eq!(es["payload"]["tollgate"]["outcome"], "missing_user");
    let cx = app.ask(&cx_request("billing.credits", json!({}))).await;
    assert_eq!(cx_text(&cx), SIGN_IN);
    // Not an address: no user either.
    let cx = app
        .ask(&cx_request(
            "billing.credits",
            json!({ "email": "not-an-address@" }),
        ))
        .await;
    assert_eq!(cx_text(&cx), SIGN_IN);

    // Unknown intent: what the agent can do, as a 200.
    let mut es = es_request(
        "input.unknown",
        Some(json!({ "userId": "u_ada" })),
        json!({}),
    );
    es["queryResult"]["intent"]["displayName"] = json!("Default Fallback Intent");
    let es = app.ask(&es).await;
    assert_eq!(es_text(&es), HELP);
    assert_eq!(
        es["payload"]["tollgate"],
        json!({ "intent": "unknown", "outcome": "unknown_intent" })
    );
    let cx = app
        .ask(&cx_request(
            "smalltalk.weather",
            json!({ "user_id": "u_ada" }),
        ))
        .await;
    assert_eq!(cx_text(&cx), HELP);
    app.stop().await;
    billing.stop().await;
    entitlements.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_user_without_a_customer_is_known() {
    let mut entitlements = Entitlements::start().await;
    tollgate_entitlements::test_users::grant(
        &entitlements.pool,
        tollgate_entitlements::test_users::RuleKind::UserId,
        "qa_tester",
        Some("pro"),
        chrono::Utc::now() + chrono::Duration::hours(1),
        "ops",
        "QA",
    )
    .await
    .unwrap();
    let app = Fulfillment::start(Options::new(entitlements.url(), None)).await;
    let expected = "You don't have a subscription; you have test access to the Pro plan.";
    // Entitlements loads the rule on its NOTIFY; until then the id is unknown.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let answer = app
            .ask(&cx_request(
                "billing.status",
                json!({ "user_id": "qa_tester" }),
            ))
            .await;
        if cx_text(&answer) == expected {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{answer}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let features = app
        .ask(&cx_request(
            "billing.features",
            json!({ "user_id": "qa_tester" }),
        ))
        .await;
    assert_eq!(
        cx_text(&features),
        "With Pro you can: Call the API (quota per tier), Read the documentation, Export data as CSV and Download scripts."
    );
    // No customer, so no portal: the billing page instead.
    let manage = app
        .ask(&cx_request(
            "billing.manage",
            json!({ "user_id": "qa_tester" }),
        ))
        .await;
    assert_eq!(
        cx_text(&manage),
        format!("You can manage your billing on your billing page: {BILLING_PAGE}")
    );
    app.stop().await;
    entitlements.stop().await;
}
