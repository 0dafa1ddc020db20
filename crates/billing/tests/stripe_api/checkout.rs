//! Subscription and top-up checkouts: the customer first, then the session, exactly as
//! Stripe expects them; the per-user limit; Stripe's refusals as typed errors.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tollgate_billing::account::{AccountError, User};
use tollgate_billing::checkout_limit::{self, CheckoutLimit};
use tollgate_billing::process;
use tollgate_plans::Plans;
use tollgate_stripe::Refetcher;
use tollgate_test_support::Reply;

use crate::helpers::*;

fn ana() -> User<'static> {
    User {
        id: "user_ana",
        email: Some("ana@example.test"),
    }
}

#[tokio::test]
async fn a_new_user_s_subscription_checkout_creates_the_customer_first_then_the_session() {
    let h = Harness::start().await;
    h.stand_in.reply(
        "POST",
        "/v1/customers",
        Reply::object(&customer_object(
            "cus_new",
            Some("user_ana"),
            "ana@example.test",
            1_763_900_000,
        )),
    );
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_sub", "subscription")),
    );

    let checkout = h
        .account()
        .subscription_checkout(ana(), "pro_monthly", None)
        .await
        .unwrap();
    assert_eq!(checkout.session_id, "cs_test_sub");
    assert_eq!(
        checkout.url,
        "https://checkout.stripe.test/c/pay/cs_test_sub"
    );
    assert_eq!(checkout.stripe_customer_id, "cus_new");

    let posts = h.posts();
    let paths: Vec<&str> = posts.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/v1/customers", "/v1/checkout/sessions"]);
    posts.iter().for_each(assert_stripe_headers);
    assert_eq!(
        posts[0].form(),
        [
            ("email".to_string(), "ana@example.test".to_string()),
            ("metadata[user_id]".to_string(), "user_ana".to_string()),
        ]
    );
    let session = &posts[1];
    for (name, value) in [
        ("mode", "subscription"),
        ("customer", "cus_new"),
        ("client_reference_id", "user_ana"),
        ("success_url", SUCCESS_URL),
        ("cancel_url", CANCEL_URL),
        ("line_items[0][price]", "price_pro_monthly"),
        ("line_items[0][quantity]", "1"),
        ("metadata[user_id]", "user_ana"),
        ("subscription_data[metadata][user_id]", "user_ana"),
    ] {
        assert_eq!(session.form_value(name).as_deref(), Some(value), "{name}");
    }
    assert_ne!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );

    // The link is stored before the session exists: the checkout webhook finds it.
    let linked: (String, String) = sqlx::query_as(
        "SELECT stripe_customer_id, email FROM customers WHERE user_id = 'user_ana'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(linked, ("cus_new".into(), "ana@example.test".into()));

    // The same click again: no second customer, and the same key for the session, so
    // Stripe answers with the first one.
    h.account()
        .subscription_checkout(ana(), "pro_monthly", None)
        .await
        .unwrap();
    let again = h.posts();
    assert_eq!(again.len(), 3);
    assert_eq!(again[2].path, "/v1/checkout/sessions");
    assert_eq!(
        again[2].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    // Another plan is another intent, with another key.
    h.account()
        .subscription_checkout(ana(), "pro_yearly", None)
        .await
        .unwrap();
    let other = h.posts().pop().unwrap();
    assert_eq!(
        other.form_value("line_items[0][price]").as_deref(),
        Some("price_pro_yearly")
    );
    assert_ne!(
        other.header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
}

#[tokio::test]
async fn a_known_user_reuses_the_stored_customer_and_a_caller_key_is_honoured() {
    let h = Harness::start().await;
    h.linked_customer("cus_known", "user_bo").await;
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_known", "subscription")),
    );
    let bo = User {
        id: "user_bo",
        email: None,
    };
    let checkout = h
        .account()
        .subscription_checkout(bo, "pro_plus_monthly", Some("client-key-1"))
        .await
        .unwrap();
    assert_eq!(checkout.stripe_customer_id, "cus_known");
    let posts = h.posts();
    assert_eq!(posts.len(), 1, "no customer is created");
    assert_eq!(
        posts[0].form_value("customer").as_deref(),
        Some("cus_known")
    );
    // The caller's key, namespaced by user: stable across retries (even in another
    // idempotency bucket), different from another user's same key.
    h.advance(3_600);
    h.account()
        .subscription_checkout(bo, "pro_plus_monthly", Some("client-key-1"))
        .await
        .unwrap();
    let posts = h.posts();
    assert_eq!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    assert_eq!(h.account().ensure_customer(bo).await.unwrap(), "cus_known");
    assert_eq!(h.posts().len(), 2);
}

#[tokio::test]
async fn top_ups_sell_each_pack_with_the_metadata_billing_credits_from() {
    let h = Harness::start().await;
    h.linked_customer("cus_topup", "user_cy").await;
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_topup", "payment")),
    );
    let cy = User {
        id: "user_cy",
        email: None,
    };
    for (credits, amount, name) in [
        (500, "500", "500 credits"),
        (1_000, "900", "1,000 credits"),
        (5_000, "4000", "5,000 credits"),
        (10_000, "7500", "10,000 credits"),
    ] {
        h.account().topup_checkout(cy, credits, None).await.unwrap();
        let session = h.posts().pop().unwrap();
        assert_stripe_headers(&session);
        for (field, value) in [
            ("mode", "payment"),
            ("customer", "cus_topup"),
            ("client_reference_id", "user_cy"),
            ("line_items[0][price_data][currency]", "usd"),
            ("line_items[0][price_data][unit_amount]", amount),
            ("line_items[0][price_data][product_data][name]", name),
            ("line_items[0][quantity]", "1"),
            ("metadata[credits]", &credits.to_string()),
            ("metadata[user_id]", "user_cy"),
            (
                "payment_intent_data[metadata][credits]",
                &credits.to_string(),
            ),
        ] {
            assert_eq!(
                session.form_value(field).as_deref(),
                Some(value),
                "{credits}: {field}"
            );
        }
        assert_eq!(
            session.form_value("subscription_data[metadata][user_id]"),
            None
        );
    }
    let unknown = h.account().topup_checkout(cy, 750, None).await.unwrap_err();
    assert!(matches!(unknown, AccountError::UnknownCreditPack(750)));
    assert_eq!(unknown.status(), 400);
    assert_eq!(h.posts().len(), 4, "an unknown pack never reaches Stripe");

    // A pack priced by a Stripe price sends the price instead.
    let plans = Plans::parse(&format!(
        "{}\n[[credit_packs]]\ncredits = 2500\nprice = \"price_credits_2500\"\n",
        std::fs::read_to_string(plans_path())
            .unwrap()
            .split("[[credit_packs]]")
            .next()
            .unwrap()
    ))
    .unwrap();
    h.account_with(Arc::new(plans))
        .topup_checkout(cy, 2_500, None)
        .await
        .unwrap();
    let session = h.posts().pop().unwrap();
    assert_eq!(
        session.form_value("line_items[0][price]").as_deref(),
        Some("price_credits_2500")
    );
    assert_eq!(
        session.form_value("line_items[0][price_data][currency]"),
        None
    );

    // The contract with billing's top-up handler: the completed session Stripe sends back
    // carries this metadata, and billing credits exactly the pack.
    let sent = h.posts()[1].clone();
    let mut completed = checkout_session("cs_test_paid_1000", "payment");
    completed["customer"] = sent.form_value("customer").unwrap().into();
    completed["client_reference_id"] = sent.form_value("client_reference_id").unwrap().into();
    completed["metadata"] = json!({
        "credits": sent.form_value("metadata[credits]").unwrap(),
        "user_id": sent.form_value("metadata[user_id]").unwrap(),
    });
    completed["payment_status"] = "paid".into();
    completed["payment_intent"] = "pi_topup_1000".into();
    completed["amount_total"] = 900.into();
    completed["currency"] = "usd".into();
    let event = json!({ "id": "evt_topup_paid", "object": "event", "type": "checkout.session.completed",
        "created": 1_763_900_100, "livemode": false, "data": { "object": completed } });
    let decoded = process::decode(&serde_json::to_vec(&event).unwrap()).unwrap();
    process::apply(&h.pool, &h.plans, &Refetcher::disabled(), &decoded, 1)
        .await
        .unwrap();
    let balance: i64 = sqlx::query_scalar(
        "SELECT b.balance FROM credit_balances b JOIN customers c ON c.id = b.customer_id
          WHERE c.user_id = 'user_cy'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!(balance, 1_000);
}

#[tokio::test]
async fn the_sixth_checkout_in_a_minute_is_refused_until_the_window_slides() {
    let h = Harness::start().await;
    h.linked_customer("cus_busy", "user_dee").await;
    h.linked_customer("cus_calm", "user_eve").await;
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_busy", "payment")),
    );
    let dee = User {
        id: "user_dee",
        email: None,
    };
    // Five checkouts 5 s apart (t = 0, 5, ..., 20), then a sixth at t = 25.
    for _ in 0..5 {
        h.account().topup_checkout(dee, 500, None).await.unwrap();
        h.advance(5);
    }
    let sixth = h
        .account()
        .topup_checkout(dee, 500, None)
        .await
        .unwrap_err();
    assert!(matches!(sixth, AccountError::RateLimited { .. }), "{sixth}");
    assert_eq!((sixth.status(), sixth.code()), (429, "rate_limited"));
    assert_eq!(
        sixth.retry_after(),
        Some(Duration::from_secs(35)),
        "when t = 0 leaves the window"
    );
    assert_eq!(
        h.posts().len(),
        5,
        "a refused checkout never reaches Stripe"
    );
    let subscription = h
        .account()
        .subscription_checkout(dee, "pro_monthly", None)
        .await
        .unwrap_err();
    assert!(matches!(subscription, AccountError::RateLimited { .. }));

    // Another user has a budget of their own.
    let eve = User {
        id: "user_eve",
        email: None,
    };
    h.account().topup_checkout(eve, 500, None).await.unwrap();

    // Once the oldest attempt is a window old, one slot frees up.
    h.advance(sixth.retry_after().unwrap().as_secs() as i64);
    h.account().topup_checkout(dee, 500, None).await.unwrap();
    assert!(matches!(
        h.account().topup_checkout(dee, 500, None).await,
        Err(AccountError::RateLimited { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_cannot_both_take_the_last_slot() {
    let h = Harness::start().await;
    let now = chrono::Utc::now();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let pool = h.pool.clone();
        attempts.spawn(async move {
            checkout_limit::acquire(&pool, "user_race", now, CheckoutLimit::default())
                .await
                .unwrap()
                .is_ok()
        });
    }
    let mut allowed = 0;
    while let Some(ok) = attempts.join_next().await {
        allowed += usize::from(ok.unwrap());
    }
    assert_eq!(allowed, 5);
    let forgotten = checkout_limit::purge(&h.pool, now + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(forgotten, 5);
}

#[tokio::test]
async fn refusals_are_typed_and_a_subscriber_is_not_sold_a_second_subscription() {
    let h = Harness::start().await;
    h.linked_customer("cus_fay", "user_fay").await;
    let fay = User {
        id: "user_fay",
        email: None,
    };
    // Stripe refuses the price: its message comes back, and it is our fault (502).
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::json(
            400,
            &json!({ "error": { "type": "invalid_request_error", "code": "resource_missing",
                "param": "line_items[0][price]", "message": "No such price: 'price_pro_monthly'" } }),
        ),
    );
    let refused = h
        .account()
        .subscription_checkout(fay, "pro_monthly", None)
        .await
        .unwrap_err();
    match &refused {
        AccountError::StripeRejected(rejection) => {
            assert_eq!(rejection.message, "No such price: 'price_pro_monthly'");
            assert_eq!(rejection.param.as_deref(), Some("line_items[0][price]"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.status(), 502);

    // Stripe down, then back: the retry carries the same key, so had the first attempt
    // created a session, Stripe would hand that one back.
    h.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_after_outage", "subscription")),
    );
    h.stand_in
        .reply_once("POST", "/v1/checkout/sessions", Reply::server_error());
    let down = h
        .account()
        .subscription_checkout(fay, "pro_yearly", None)
        .await
        .unwrap_err();
    assert!(matches!(down, AccountError::StripeUnavailable(_)), "{down}");
    assert_eq!(down.status(), 503);
    let session = h
        .account()
        .subscription_checkout(fay, "pro_yearly", None)
        .await
        .unwrap();
    assert_eq!(session.session_id, "cs_test_after_outage");
    let posts = h.posts();
    let keys: Vec<_> = posts[1..]
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys[0], keys[1]);

    // Unknown plan: refused before Stripe.
    let unknown = h
        .account()
        .subscription_checkout(fay, "gold", None)
        .await
        .unwrap_err();
    assert!(matches!(unknown, AccountError::UnknownPlan(_)));

    // Once subscribed, a second subscription is refused (change the plan instead).
    h.stored_subscription("sub_fay", "cus_fay", "active", "price_pro_monthly")
        .await;
    let twice = h
        .account()
        .subscription_checkout(fay, "pro_plus_monthly", None)
        .await
        .unwrap_err();
    assert!(matches!(twice, AccountError::AlreadySubscribed), "{twice}");
    assert_eq!(twice.status(), 409);
    assert_eq!(h.posts().len(), 3);
    // Credits can still be bought.
    h.account().topup_checkout(fay, 500, None).await.unwrap();

    let invalid = h
        .account()
        .topup_checkout(
            User {
                id: "",
                email: None,
            },
            500,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(invalid.status(), 400);
}

#[tokio::test]
async fn a_user_row_without_a_stripe_customer_gets_the_new_one() {
    let h = Harness::start().await;
    sqlx::query("INSERT INTO customers (user_id, test_user) VALUES ('user_gil', true)")
        .execute(&h.pool)
        .await
        .unwrap();
    h.stand_in.reply(
        "POST",
        "/v1/customers",
        Reply::object(&customer_object(
            "cus_gil",
            Some("user_gil"),
            "gil@example.test",
            1,
        )),
    );
    let gil = User {
        id: "user_gil",
        email: Some("gil@example.test"),
    };
    assert_eq!(h.account().ensure_customer(gil).await.unwrap(), "cus_gil");
    let rows: Vec<(Option<String>, bool)> = sqlx::query_as(
        "SELECT stripe_customer_id, test_user FROM customers WHERE user_id = 'user_gil'",
    )
    .fetch_all(&h.pool)
    .await
    .unwrap();
    assert_eq!(rows, [(Some("cus_gil".to_string()), true)]);
    // From the environment, a key is required.
    let env = tollgate_runtime::Env::from_pairs([
        ("CHECKOUT_SUCCESS_URL", "https://app.test/ok"),
        ("CHECKOUT_CANCEL_URL", "https://app.test/no"),
        ("PORTAL_RETURN_URL", "https://app.test/account"),
    ]);
    let missing =
        tollgate_billing::account::Account::from_env(h.pool.clone(), h.plans.clone(), &env)
            .unwrap_err();
    assert_eq!(
        missing,
        tollgate_runtime::ConfigError::Missing {
            name: "STRIPE_SECRET_KEY"
        }
    );
}
