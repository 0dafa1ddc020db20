//! Each intent, asked by Dialogflow ES and by Dialogflow CX, answered from real state.

use serde_json::json;

use crate::helpers::*;

const ADA_STATUS: &str = "You're on Pro monthly, billed monthly. Your subscription is active. Your last payment went through on November 13, 2026. Next billing date: December 13, 2026.";
const ADA_FEATURES: &str = "With Pro you can: Call the API (quota per tier), Read the documentation, Export data as CSV and Download scripts.";

/// Ada: active Pro monthly, paid, 1,250 credits. Bob: his renewal payment failed. Cy: a
/// customer whose subscription ended, free again (so billing sells Cy a new one).
async fn seed(entitlements: &Entitlements) {
    let ada = entitlements
        .customer("u_ada", "ada@example.com", "active", "pro")
        .await;
    entitlements
        .subscription(
            "u_ada",
            "active",
            "price_pro_monthly",
            "pro",
            "Pro monthly",
            true,
        )
        .await;
    entitlements.set_balance(ada, 1250).await;
    entitlements
        .customer("u_bob", "bob@example.com", "payment_failed", "free")
        .await;
    entitlements
        .subscription(
            "u_bob",
            "past_due",
            "price_pro_monthly",
            "pro",
            "Pro monthly",
            false,
        )
        .await;
    entitlements
        .customer("u_cy", "cy@example.com", "canceled", "free")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es_answers_every_intent_from_real_state() {
    let mut entitlements = Entitlements::start().await;
    seed(&entitlements).await;
    let billing = BillingApi::start(&entitlements).await;
    let app = Fulfillment::start(Options::new(entitlements.url(), Some(&billing))).await;
    let ada = Some(json!({ "email": "ada@example.com" }));

    // Status: the whole answer, exactly as Dialogflow ES expects it.
    let answer = app
        .ask(&es_request("billing.status", ada.clone(), json!({})))
        .await;
    assert_eq!(
        answer,
        json!({
            "fulfillmentText": ADA_STATUS,
            "fulfillmentMessages": [{ "text": { "text": [ADA_STATUS] } }],
            "source": "tollgate",
            "payload": { "tollgate": { "intent": "billing.status", "outcome": "answered" } },
            // The active contexts go back as received, with ours added.
            "outputContexts": [
                fixture("es-webhook-request.json")["queryResult"]["outputContexts"][0].clone(),
                {
                    "name": format!("{ES_SESSION}/contexts/tollgate-billing"),
                    "lifespanCount": 5,
                    "parameters": { "user_id": "u_ada" }
                }
            ]
        })
    );

    // The intent's display name works as well as its action.
    let mut by_name = es_request("", ada.clone(), json!({}));
    by_name["queryResult"]["intent"]["displayName"] = json!("billing.features");
    assert_eq!(es_text(&app.ask(&by_name).await), ADA_FEATURES);

    // One feature, through Check: by key, and by the description people say.
    let sso = app
        .ask(&es_request(
            "billing.features",
            ada.clone(),
            json!({ "feature": "sso" }),
        ))
        .await;
    assert_eq!(
        es_text(&sso),
        "No: \"Single sign-on\" isn't included in Pro. Ask me how to upgrade to get it."
    );
    let scripts = app
        .ask(&es_request(
            "billing.features",
            ada.clone(),
            json!({ "feature": "download scripts" }),
        ))
        .await;
    assert_eq!(
        es_text(&scripts),
        "Yes: \"Download scripts\" is included in your Pro plan."
    );

    let credits = app
        .ask(&es_request("billing.credits", ada.clone(), json!({})))
        .await;
    assert_eq!(es_text(&credits), "You have 1,250 credits.");

    // Upgrade: a checkout session for the plan named, from billing's API (and Stripe
    // behind it).
    let checkout = billing.next_checkout("cs_test_pro_plus_monthly_u_cy");
    let upgrade = app
        .ask(&es_request(
            "billing.upgrade",
            Some(json!({ "email": "cy@example.com" })),
            json!({ "plan": "Pro Plus monthly" }),
        ))
        .await;
    assert_eq!(
        es_text(&upgrade),
        format!("Here is your checkout link for Pro Plus monthly: {checkout}")
    );
    assert_eq!(
        own_context(&upgrade),
        json!({ "user_id": "u_cy", "checkout_url": checkout })
    );
    assert_eq!(
        upgrade["payload"]["tollgate"],
        json!({ "intent": "billing.upgrade", "outcome": "answered", "url": checkout })
    );

    // Ada already subscribes: billing sells no second subscription, so she changes
    // plan in the Customer Portal.
    let change = billing.next_portal("u_ada");
    let again = app
        .ask(&es_request(
            "billing.upgrade",
            ada.clone(),
            json!({ "plan": "Pro Plus monthly" }),
        ))
        .await;
    assert_eq!(
        es_text(&again),
        format!("You're subscribed to Pro monthly. You can change your plan here: {change}")
    );
    assert_eq!(
        again["payload"]["tollgate"],
        json!({ "intent": "billing.upgrade", "outcome": "answered", "url": change })
    );

    // Manage: a Customer Portal session.
    let portal = billing.next_portal("u_ada");
    let manage = app
        .ask(&es_request("billing.manage", ada.clone(), json!({})))
        .await;
    assert_eq!(
        es_text(&manage),
        format!(
            "You can update your payment method, see invoices or change your plan here: {portal}"
        )
    );
    assert_eq!(
        own_context(&manage),
        json!({ "user_id": "u_ada", "portal_url": portal })
    );

    // Bob's payment failed: the status says so and points at the fix.
    let bob = app
        .ask(&es_request(
            "billing.status",
            Some(json!({ "userId": "u_bob" })),
            json!({}),
        ))
        .await;
    assert_eq!(
        es_text(&bob),
        "You're on Pro monthly, billed monthly. Your subscription is on hold because the latest payment failed. Your latest payment failed: ask me to manage your billing to update your card. Next billing date: December 13, 2026."
    );
    let bob_scripts = app
        .ask(&es_request(
            "billing.features",
            Some(json!({ "userId": "u_bob" })),
            json!({ "feature": "scripts.download" }),
        ))
        .await;
    assert_eq!(
        es_text(&bob_scripts),
        "Not right now: \"Download scripts\" is paused because of a payment problem. Ask me to manage your billing to fix it."
    );

    // Billing accepted fulfillment's service token and asked Stripe for exactly these.
    assert_eq!(
        billing.stripe_posts(),
        vec![
            (
                "/v1/checkout/sessions".to_string(),
                json!({
                    "customer": "cus_u_cy",
                    "client_reference_id": "u_cy",
                    "mode": "subscription",
                    "line_items[0][price]": "price_pro_plus_monthly",
                    "metadata[user_id]": "u_cy",
                })
            ),
            (
                "/v1/billing_portal/sessions".to_string(),
                json!({ "customer": "cus_u_ada", "return_url": PORTAL_RETURN_URL })
            ),
            (
                "/v1/billing_portal/sessions".to_string(),
                json!({ "customer": "cus_u_ada", "return_url": PORTAL_RETURN_URL })
            ),
        ]
    );
    app.stop().await;
    billing.stop().await;
    entitlements.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cx_answers_every_intent_from_real_state() {
    let mut entitlements = Entitlements::start().await;
    seed(&entitlements).await;
    let billing = BillingApi::start(&entitlements).await;
    let app = Fulfillment::start(Options::new(entitlements.url(), Some(&billing))).await;
    let ada = json!({ "user_id": "u_ada" });

    let answer = app.ask(&cx_request("billing.status", ada.clone())).await;
    assert_eq!(
        answer,
        json!({
            "fulfillmentResponse": {
                "messages": [{ "text": { "text": [ADA_STATUS] } }],
                "mergeBehavior": "REPLACE"
            },
            "sessionInfo": { "session": CX_SESSION, "parameters": { "user_id": "u_ada" } },
            "payload": { "tollgate": { "intent": "billing.status", "outcome": "answered" } }
        })
    );

    let features = app.ask(&cx_request("billing.features", ada.clone())).await;
    assert_eq!(cx_text(&features), ADA_FEATURES);

    // By email in the session parameters, and camelCase userId too.
    let credits = app
        .ask(&cx_request(
            "billing.credits",
            json!({ "email": "Ada@Example.com" }),
        ))
        .await;
    assert_eq!(cx_text(&credits), "You have 1,250 credits.");
    assert_eq!(
        credits["sessionInfo"]["parameters"],
        json!({ "user_id": "u_ada" })
    );
    let bob = app
        .ask(&cx_request("billing.credits", json!({ "userId": "u_bob" })))
        .await;
    assert_eq!(cx_text(&bob), "You have 0 credits.");

    // Upgrade without a plan: the default plan (the first one for sale).
    let checkout = billing.next_checkout("cs_test_pro_monthly_u_cy");
    let upgrade = app
        .ask(&cx_request("billing.upgrade", json!({ "user_id": "u_cy" })))
        .await;
    assert_eq!(
        cx_text(&upgrade),
        format!("Here is your checkout link for Pro monthly: {checkout}")
    );
    assert_eq!(
        upgrade["sessionInfo"]["parameters"],
        json!({ "user_id": "u_cy", "checkout_url": checkout })
    );

    // An unknown plan is named back with the choices; billing is not asked.
    let unknown_plan = app
        .ask(&cx_request(
            "billing.upgrade",
            json!({ "user_id": "u_ada", "plan": "platinum" }),
        ))
        .await;
    assert_eq!(
        cx_text(&unknown_plan),
        "I don't know the plan \"platinum\". You can choose Pro monthly, Pro yearly, Pro Plus monthly or Enterprise yearly."
    );

    let portal = billing.next_portal("u_bob");
    let manage = app
        .ask(&cx_request(
            "billing.manage",
            json!({ "email": "bob@example.com" }),
        ))
        .await;
    assert_eq!(
        cx_text(&manage),
        format!(
            "You can update your payment method, see invoices or change your plan here: {portal}"
        )
    );
    assert_eq!(
        manage["sessionInfo"]["parameters"],
        json!({ "user_id": "u_bob", "portal_url": portal })
    );

    assert_eq!(
        billing.stripe_posts(),
        vec![
            (
                "/v1/checkout/sessions".to_string(),
                json!({
                    "customer": "cus_u_cy",
                    "client_reference_id": "u_cy",
                    "mode": "subscription",
                    "line_items[0][price]": "price_pro_monthly",
                    "metadata[user_id]": "u_cy",
                })
            ),
            (
                "/v1/billing_portal/sessions".to_string(),
                json!({ "customer": "cus_u_bob", "return_url": PORTAL_RETURN_URL })
            ),
        ]
    );
    app.stop().await;
    billing.stop().await;
    entitlements.stop().await;
}
