//! Status, history, verify-payment and user-auth, computed from state billing built out
//! of real events; users only ever see their own.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tollgate_test_support::unix_now;

use crate::helpers::*;

#[tokio::test]
async fn status_reports_tier_access_credits_and_the_subscription() {
    let api = spawn_api(Options::default()).await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    let ana = user_token("user_ana", Some("ana@example.test"));

    let status = api.get("/v1/billing/status", &ana).await;
    assert_eq!(status.status, 200, "{}", status.body);
    let body = &status.body;
    assert_eq!(body["user_id"], "user_ana");
    assert_eq!(body["tier"], "pro");
    assert_eq!(body["tier_name"], "Pro");
    assert_eq!(body["status"], "active");
    assert_eq!(body["hasAccess"], true);
    assert_eq!(body["test_user"], false);
    assert_eq!(
        body["credits"],
        json!({"balance": 880, "used": 120, "limit": 1000})
    );
    let subscription = &body["subscription"];
    assert_eq!(subscription["id"], "sub_user_ana");
    assert_eq!(subscription["plan"], "pro_monthly");
    assert_eq!(subscription["plan_name"], "Pro monthly");
    assert_eq!(subscription["status"], "active");
    assert_eq!(subscription["billing_cycle"], "month");
    assert_eq!(subscription["payment_status"], "paid");
    // subscription_object's period: 2025-10-09 + 30 days.
    assert_eq!(subscription["next_billing_date"], "2025-11-08T08:53:20Z");
    assert_eq!(body["last_payment_date"], "2025-11-08T08:53:40Z");

    // The same through a service token naming the user.
    let by_service = api
        .get("/v1/billing/status?user_id=user_ana", SERVICE_TOKEN)
        .await;
    assert_eq!(by_service.body, status.body);

    // A user billing has never heard of: the default tier, nothing else.
    let new = api
        .get("/v1/billing/status", &user_token("user_new", None))
        .await;
    assert_eq!(new.status, 200);
    assert_eq!(new.body["tier"], "free");
    assert_eq!(new.body["status"], "none");
    assert_eq!(new.body["hasAccess"], false);
    assert_eq!(new.body["subscription"], json!(null));
    assert_eq!(new.body["credits"]["balance"], 0);

    let answer = api.get("/v1/billing/status", SERVICE_TOKEN).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
    let answer = api.get("/v1/billing/status?userid=x", SERVICE_TOKEN).await;
    assert_eq!((answer.status, answer.code()), (400, "invalid_request"));
}

#[tokio::test]
async fn history_is_paginated_with_invoice_links_and_cards_without_numbers() {
    let api = spawn_api(Options::default()).await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    let ana = user_token("user_ana", None);

    let first = api.get("/v1/billing/invoices?limit=1", &ana).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(first.body["has_more"], true);
    let newest = &first.body["data"][0];
    assert_eq!(newest["id"], "in_user_ana_2");
    assert_eq!(newest["status"], "paid");
    assert_eq!(
        newest["hosted_invoice_url"],
        "https://invoice.stripe.test/i/user_ana_2"
    );
    assert_eq!(
        newest["invoice_pdf"],
        "https://pay.stripe.test/invoice/user_ana_2/pdf"
    );
    assert!(newest["amount_paid"].as_i64().unwrap() > 0);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = api
        .get(
            &format!("/v1/billing/invoices?limit=1&cursor={cursor}"),
            &ana,
        )
        .await;
    assert_eq!(second.body["data"][0]["id"], "in_user_ana_1");
    assert_eq!(second.body["has_more"], false);
    assert_eq!(second.body["next_cursor"], json!(null));

    // Each paid invoice is a subscription payment in the history, newest first.
    let transactions = api.get("/v1/billing/transactions?limit=1", &ana).await;
    assert_eq!(transactions.status, 200, "{}", transactions.body);
    let all = api.get("/v1/billing/transactions", &ana).await;
    let kinds: Vec<&str> = all.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds
            .iter()
            .filter(|k| **k == "subscription_payment")
            .count()
            >= 2,
        "{kinds:?}"
    );
    assert_eq!(transactions.body["data"][0], all.body["data"][0]);
    let cursor = transactions.body["next_cursor"].as_str().unwrap();
    let next = api
        .get(
            &format!("/v1/billing/transactions?limit=1&cursor={cursor}"),
            &ana,
        )
        .await;
    assert_eq!(next.body["data"][0], all.body["data"][1]);

    let cards = api.get("/v1/billing/payment-methods", &ana).await;
    assert_eq!(cards.status, 200, "{}", cards.body);
    let card = &cards.body["data"][0];
    assert_eq!(card["id"], "pm_user_ana");
    assert_eq!(card["type"], "card");
    assert_eq!(card["last4"].as_str().unwrap().len(), 4);
    assert!(card.get("number").is_none());

    for bad in [
        "/v1/billing/invoices?limit=0",
        "/v1/billing/invoices?limit=101",
        "/v1/billing/invoices?limit=ten",
        "/v1/billing/invoices?cursor=garbage",
        "/v1/billing/transactions?cursor=12_not-a-uuid",
        "/v1/billing/payment-methods?page=2",
    ] {
        let answer = api.get(bad, &ana).await;
        assert_eq!(
            (answer.status, answer.code()),
            (400, "invalid_request"),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn a_user_never_sees_anyone_else_s_billing() {
    let api = spawn_api(Options::default()).await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    let bo = user_token("user_bo", Some("bo@example.test"));
    for path in [
        "/v1/billing/status?user_id=user_ana",
        "/v1/billing/transactions?user_id=user_ana",
        "/v1/billing/invoices?user_id=user_ana",
        "/v1/billing/payment-methods?user_id=user_ana",
        "/v1/verify-payment/ana@example.test",
        "/v1/admin/customers/user_ana/transactions",
    ] {
        let answer = api.get(path, &bo).await;
        assert_eq!((answer.status, answer.code()), (403, "forbidden"), "{path}");
        assert!(!answer.body.to_string().contains("cus_ana"), "{path}");
    }
    for path in [
        "/v1/billing/transactions",
        "/v1/billing/invoices",
        "/v1/billing/payment-methods",
    ] {
        let own = api.get(path, &bo).await;
        assert_eq!(own.status, 200);
        assert_eq!(own.body["data"], json!([]), "{path}");
    }
}

#[tokio::test]
async fn verify_payment_is_for_services_and_user_auth_names_the_role() {
    let api = spawn_api(Options {
        jwks: true,
        ..Options::default()
    })
    .await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    api.customer("cus_cy", "user_cy", "cy@example.test").await;

    let paid = api
        .get("/v1/verify-payment/Ana@Example.test", SERVICE_TOKEN)
        .await;
    assert_eq!(paid.status, 200, "{}", paid.body);
    assert_eq!(paid.body["paid"], true);
    assert_eq!(paid.body["hasAccess"], true);
    assert_eq!(paid.body["tier"], "pro");
    assert_eq!(paid.body["user_id"], "user_ana");
    let lapsed = api
        .get("/v1/verify-payment/cy@example.test", SERVICE_TOKEN)
        .await;
    assert_eq!(
        (lapsed.body["known"].clone(), lapsed.body["paid"].clone()),
        (json!(true), json!(false))
    );
    let unknown = api
        .get("/v1/verify-payment/nobody@example.test", SERVICE_TOKEN)
        .await;
    assert_eq!(unknown.status, 200);
    assert_eq!(unknown.body["known"], false);
    assert_eq!(unknown.body["paid"], false);
    let bad = api
        .get("/v1/verify-payment/not-an-email", SERVICE_TOKEN)
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_request"));
    let user = api
        .get(
            "/v1/verify-payment/ana@example.test",
            &user_token("user_ana", Some("ana@example.test")),
        )
        .await;
    assert_eq!((user.status, user.code()), (403, "forbidden"));

    // HS256 user tokens.
    let me = api
        .get(
            "/v1/user-auth",
            &user_token("user_ana", Some("Ana@Example.test")),
        )
        .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["kind"], "user");
    assert_eq!(me.body["user_id"], "user_ana");
    assert_eq!(me.body["email"], "ana@example.test");
    assert_eq!(me.body["role"], "paid");
    let cy = api.get("/v1/user-auth", &user_token("user_cy", None)).await;
    assert_eq!(cy.body["role"], "subscriber");
    // RS256 through the JWKS URL.
    let key = EncodingKey::from_rsa_pem(&fixture("jwt/rs256-test-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let rs256 = jsonwebtoken::encode(
        &header,
        &json!({"sub": "user_new", "exp": unix_now() + 300}),
        &key,
    )
    .unwrap();
    let visitor = api.get("/v1/user-auth", &rs256).await;
    assert_eq!(visitor.status, 200, "{}", visitor.body);
    assert_eq!(visitor.body["user_id"], "user_new");
    assert_eq!(visitor.body["role"], "visitor");
    header.kid = Some("unknown-key".into());
    let unknown_key = jsonwebtoken::encode(
        &header,
        &json!({"sub": "user_new", "exp": unix_now() + 300}),
        &key,
    )
    .unwrap();
    assert_eq!(api.get("/v1/user-auth", &unknown_key).await.status, 401);
    let service = api.get("/v1/user-auth", SERVICE_TOKEN).await;
    assert_eq!(service.body["kind"], "service");
    assert_eq!(service.body["name"], "fulfillment");
}
