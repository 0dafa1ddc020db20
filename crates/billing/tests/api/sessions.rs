//! `POST /v1/checkout/sessions` and `POST /v1/portal/sessions`, for users and for
//! service callers acting on a user's behalf, through the Stripe stand-in.

use serde_json::{Value, json};
use tollgate_test_support::{Reply, stripe_object};

use crate::helpers::*;

fn customer_object(id: &str, user: &str) -> Value {
    let mut customer = stripe_object("customer");
    customer["id"] = id.into();
    customer["metadata"] = json!({ "user_id": user });
    customer["discount"] = Value::Null;
    customer
}

fn checkout_session(id: &str, mode: &str) -> Value {
    let mut session = stripe_object("checkout.session");
    session["id"] = id.into();
    session["mode"] = mode.into();
    session["url"] = format!("https://checkout.stripe.test/c/pay/{id}").into();
    session
}

#[tokio::test]
async fn users_and_services_get_checkout_sessions_with_exactly_id_and_url() {
    let api = spawn_api(Options::default()).await;
    for (customer, user) in [("cus_ana", "user_ana"), ("cus_bo", "user_bo")] {
        api.stand_in.reply_once(
            "POST",
            "/v1/customers",
            Reply::object(&customer_object(customer, user)),
        );
    }
    api.stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&checkout_session("cs_test_api", "subscription")),
    );

    // A signed-in user: the email comes from their token.
    let token = user_token("user_ana", Some("ana@example.test"));
    let answer = api
        .post(
            "/v1/checkout/sessions",
            &token,
            json!({"kind": "subscription", "plan": "pro_monthly"}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"id": "cs_test_api", "url": "https://checkout.stripe.test/c/pay/cs_test_api"})
    );
    let sessions = api.stand_in.requests_to("POST", "/v1/checkout/sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0].form_value("client_reference_id").as_deref(),
        Some("user_ana")
    );
    assert_eq!(
        sessions[0].form_value("line_items[0][price]").as_deref(),
        Some("price_pro_monthly")
    );
    assert_eq!(
        sessions[0].form_value("success_url").as_deref(),
        Some(SUCCESS_URL)
    );
    let customers = api.stand_in.requests_to("POST", "/v1/customers");
    assert_eq!(
        customers[0].form_value("email").as_deref(),
        Some("ana@example.test")
    );

    // The Dialogflow fulfillment, for another user, buying a credit pack.
    let answer = api
        .post(
            "/v1/checkout/sessions",
            SERVICE_TOKEN,
            json!({"kind": "topup", "pack": 500, "user_id": "user_bo", "email": "Bo@Example.test"}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(answer.body.as_object().unwrap().len(), 2);
    let sessions = api.stand_in.requests_to("POST", "/v1/checkout/sessions");
    let topup = sessions.last().unwrap();
    assert_eq!(topup.form_value("mode").as_deref(), Some("payment"));
    assert_eq!(
        topup.form_value("client_reference_id").as_deref(),
        Some("user_bo")
    );
    assert_eq!(
        topup.form_value("metadata[credits]").as_deref(),
        Some("500")
    );
    let customers = api.stand_in.requests_to("POST", "/v1/customers");
    assert_eq!(
        customers.last().unwrap().form_value("email").as_deref(),
        Some("bo@example.test")
    );
    // Both users are now linked to their own Stripe customers.
    let linked: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, stripe_customer_id FROM customers ORDER BY user_id")
            .fetch_all(&api.pool)
            .await
            .unwrap();
    assert_eq!(
        linked,
        [
            ("user_ana".to_string(), "cus_ana".to_string()),
            ("user_bo".to_string(), "cus_bo".to_string())
        ]
    );
}

#[tokio::test]
async fn bad_checkout_requests_are_clear_4xx_and_reach_no_stripe() {
    let api = spawn_api(Options::default()).await;
    let ana = user_token("user_ana", Some("ana@example.test"));
    let cases = [
        (&ana, json!({"plan": "pro_monthly"}), 400, "invalid_request"),
        (
            &ana,
            json!({"kind": "gift", "plan": "pro_monthly"}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "subscription"}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "subscription", "plan": "pro_monthly", "pack": 500}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "topup", "pack": -5}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "subscription", "plan": "gold"}),
            400,
            "unknown_plan",
        ),
        (
            &ana,
            json!({"kind": "topup", "pack": 7}),
            400,
            "unknown_credit_pack",
        ),
        (
            &ana,
            json!({"kind": "topup", "pack": 500, "coupon": "FREE"}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "topup", "pack": 500, "email": "x@y.test"}),
            400,
            "invalid_request",
        ),
        (
            &ana,
            json!({"kind": "topup", "pack": 500, "user_id": "user_bo"}),
            403,
            "forbidden",
        ),
    ];
    for (token, body, status, code) in cases {
        let answer = api.post("/v1/checkout/sessions", token, body.clone()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{body}: {}",
            answer.body
        );
        assert!(!answer.body["error"]["message"].as_str().unwrap().is_empty());
    }
    let service = SERVICE_TOKEN.to_string();
    let answer = api
        .post(
            "/v1/checkout/sessions",
            &service,
            json!({"kind": "topup", "pack": 500}),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
    assert!(
        answer.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("user_id")
    );
    let answer = api
        .post(
            "/v1/checkout/sessions",
            &service,
            json!({"kind": "topup", "pack": 500, "user_id": " padded"}),
        )
        .await;
    assert_eq!(answer.status, 400);

    // Not JSON, not declared as JSON, too large.
    let raw = |body: &'static str, content_type: &'static str| {
        api.http
            .post(api.url("/v1/checkout/sessions"))
            .bearer_auth(&ana)
            .header("content-type", content_type)
            .body(body)
    };
    let answer = api.send(raw("{\"kind\":", "application/json")).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
    let answer = api
        .send(raw("kind=topup", "application/x-www-form-urlencoded"))
        .await;
    assert_eq!(
        (answer.status, answer.code()),
        (415, "unsupported_media_type")
    );
    let huge = json!({"kind": "topup", "pack": 500, "pad": "x".repeat(20_000)});
    let answer = api.post("/v1/checkout/sessions", &ana, huge).await;
    assert_eq!((answer.status, answer.code()), (413, "body_too_large"));
    let answer = api
        .send(
            api.http
                .post(api.url("/v1/checkout/sessions"))
                .bearer_auth(&ana)
                .header("idempotency-key", "has spaces")
                .json(&json!({"kind": "topup", "pack": 500})),
        )
        .await;
    assert_eq!(answer.status, 400);

    assert!(
        api.stand_in.requests().is_empty(),
        "nothing reached Stripe: {:?}",
        api.stand_in
            .requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(count(&api.pool, "SELECT count(*) FROM customers").await, 0);
}

#[tokio::test]
async fn portal_sessions_for_a_user_with_a_customer_and_404_without_one() {
    let api = spawn_api(Options::default()).await;
    api.customer("cus_ana", "user_ana", "ana@example.test")
        .await;
    let mut session = stripe_object("billing_portal.session");
    session["url"] = "https://billing.stripe.test/p/session/ana".into();
    session["customer"] = "cus_ana".into();
    api.stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::object(&session),
    );

    // A user may send no body at all.
    let ana = user_token("user_ana", None);
    let answer = api
        .send(
            api.http
                .post(api.url("/v1/portal/sessions"))
                .bearer_auth(&ana),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);
    assert_eq!(
        answer.body,
        json!({"url": "https://billing.stripe.test/p/session/ana"})
    );
    let posts = api
        .stand_in
        .requests_to("POST", "/v1/billing_portal/sessions");
    assert_eq!(posts[0].form_value("customer").as_deref(), Some("cus_ana"));
    assert_eq!(
        posts[0].form_value("return_url").as_deref(),
        Some(RETURN_URL)
    );

    let answer = api
        .post(
            "/v1/portal/sessions",
            SERVICE_TOKEN,
            json!({"user_id": "user_ana"}),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.body);

    let answer = api
        .post(
            "/v1/portal/sessions",
            SERVICE_TOKEN,
            json!({"user_id": "user_nobody"}),
        )
        .await;
    assert_eq!((answer.status, answer.code()), (404, "no_such_customer"));
    let answer = api
        .post("/v1/portal/sessions", &ana, json!({"user_id": "user_bo"}))
        .await;
    assert_eq!((answer.status, answer.code()), (403, "forbidden"));
}
