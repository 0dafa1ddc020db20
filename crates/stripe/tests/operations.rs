//! The typed operations against the Stripe stand-in: what Stripe receives, and how its
//! answers come back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use tollgate_stripe::operations::{
    CancelNow, CheckoutMode, CheckoutParams, Collection, Cursor, CustomerParams, LineItem,
    ListParams, PortalParams,
};
use tollgate_stripe::{
    Backoff, IdempotencyKey, Rejection, SecretKey, StripeApiError, StripeClient, api_version,
};
use tollgate_test_support::{Reply, StripeStandIn, stripe_object};

const KEY: &str = "sk_test_tollgate_operations";

fn client(stand_in: &StripeStandIn) -> StripeClient {
    StripeClient::new(
        &SecretKey::new(KEY).unwrap(),
        &stand_in.api_base(),
        Duration::from_secs(3),
    )
    .unwrap()
}

fn fast() -> Backoff {
    Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
        attempts: 4,
    }
}

#[tokio::test]
async fn posts_are_form_encoded_authenticated_versioned_and_idempotent() {
    let stand_in = StripeStandIn::start().await;
    let client = client(&stand_in);
    stand_in.reply(
        "POST",
        "/v1/customers",
        Reply::object(&stripe_object("customer")),
    );
    stand_in.reply(
        "POST",
        "/v1/checkout/sessions",
        Reply::object(&stripe_object("checkout.session")),
    );
    stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::object(&stripe_object("billing_portal.session")),
    );

    let key = IdempotencyKey::derive("customer", &["user_7"]);
    let params = CustomerParams {
        email: Some("ana@example.test".into()),
        metadata: BTreeMap::from([("user_id".into(), "user_7".into())]),
    };
    let customer = client.create_customer(&params, &key).await.unwrap();
    assert_eq!(customer.id, "cus_QXg1o8vcGmoR32");
    // A retry of the same intent sends the same key.
    client.create_customer(&params, &key).await.unwrap();

    let session = client
        .create_checkout_session(
            &CheckoutParams {
                mode: CheckoutMode::Subscription,
                customer: customer.id.clone(),
                client_reference_id: "user_7".into(),
                success_url: "https://app.test/ok".into(),
                cancel_url: "https://app.test/no".into(),
                line_items: vec![LineItem {
                    price: Some("price_pro_monthly".into()),
                    price_data: None,
                    quantity: 1,
                }],
                metadata: BTreeMap::from([("user_id".into(), "user_7".into())]),
                subscription_data: None,
                payment_intent_data: None,
            },
            &IdempotencyKey::derive("checkout", &["user_7", "pro_monthly"]),
        )
        .await
        .unwrap();
    assert!(session.id.starts_with("cs_test_"));
    assert!(session.url.is_some());

    let portal = client
        .create_portal_session(
            &PortalParams {
                customer: customer.id.clone(),
                return_url: "https://app.test/account".into(),
            },
            &IdempotencyKey::derive("portal", &["user_7"]),
        )
        .await
        .unwrap();
    assert_eq!(portal.id, "bps_1Pgc7HB7WZ01zgkWNs8s9Auh");

    let requests = stand_in.requests();
    assert_eq!(requests.len(), 4);
    for request in &requests {
        assert_eq!(request.method, "POST");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(request.header("stripe-version"), Some(api_version()));
        assert_eq!(
            request.header("content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(
            request
                .header("idempotency-key")
                .is_some_and(|k| k.starts_with("tollgate-")),
            "{:?}",
            request.header("idempotency-key")
        );
    }
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    assert_eq!(
        requests[0].form(),
        [
            ("email".to_string(), "ana@example.test".to_string()),
            ("metadata[user_id]".to_string(), "user_7".to_string()),
        ]
    );
    let checkout = &requests[2];
    assert_eq!(checkout.path, "/v1/checkout/sessions");
    assert_eq!(checkout.form_value("mode").as_deref(), Some("subscription"));
    assert_eq!(
        checkout.form_value("line_items[0][price]").as_deref(),
        Some("price_pro_monthly")
    );
    assert_eq!(
        checkout.form_value("line_items[0][quantity]").as_deref(),
        Some("1")
    );
    assert_eq!(
        checkout.form_value("client_reference_id").as_deref(),
        Some("user_7")
    );
    assert_eq!(
        requests[3].form_value("return_url").as_deref(),
        Some("https://app.test/account")
    );
}

#[tokio::test]
async fn refusals_keep_stripe_s_reason_and_deletes_carry_no_body() {
    let stand_in = StripeStandIn::start().await;
    let client = client(&stand_in);
    stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::json(
            400,
            &json!({ "error": { "type": "invalid_request_error", "code": "resource_missing",
                "param": "customer", "message": "No such customer: 'cus_gone'" } }),
        ),
    );
    let error = client
        .create_portal_session(
            &PortalParams {
                customer: "cus_gone".into(),
                return_url: "https://app.test/".into(),
            },
            &IdempotencyKey::derive("portal", &["x"]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error,
        StripeApiError::Rejected(Rejection {
            status: 400,
            error_type: "invalid_request_error".into(),
            code: Some("resource_missing".into()),
            param: Some("customer".into()),
            message: "No such customer: 'cus_gone'".into(),
        })
    );
    assert!(!error.is_transient());
    assert!(!error.to_string().contains(KEY));
    // Printed (and so logged) without Stripe's message, which may quote what was sent.
    assert_eq!(
        error.to_string(),
        "Stripe refused the request: 400 invalid_request_error resource_missing (customer)"
    );

    let mut canceled = stripe_object("subscription");
    canceled["id"] = "sub_now".into();
    canceled["status"] = "canceled".into();
    stand_in.reply(
        "DELETE",
        "/v1/subscriptions/sub_now",
        Reply::object(&canceled),
    );
    let answer = client
        .cancel_subscription(
            "sub_now",
            &CancelNow {
                invoice_now: true,
                prorate: true,
            },
        )
        .await
        .unwrap();
    assert_eq!(answer["status"], "canceled");
    let delete = &stand_in.requests_to("DELETE", "/v1/subscriptions/sub_now")[0];
    assert!(delete.body.is_empty());
    assert_eq!(
        delete.query.as_deref(),
        Some("invoice_now=true&prorate=true")
    );
    assert_eq!(delete.header("idempotency-key"), None);
    assert!(matches!(
        client
            .cancel_subscription("sub_1/../../customers", &CancelNow::default())
            .await,
        Err(StripeApiError::Other(_))
    ));
}

#[tokio::test]
async fn lists_back_off_on_429_and_5xx_then_succeed_but_give_up_when_bounded() {
    let stand_in = StripeStandIn::start().await;
    let client = client(&stand_in);
    let customers: Vec<_> = (1..=3)
        .map(|i| {
            let mut c = stripe_object("customer");
            c["id"] = format!("cus_{i}").into();
            c["created"] = (1_700_000_000 + i).into();
            c
        })
        .collect();
    stand_in.put_list("customers", customers);
    stand_in.reply_once("GET", "/v1/customers", Reply::rate_limited());
    stand_in.reply_once("GET", "/v1/customers", Reply::server_error());
    stand_in.reply_once("GET", "/v1/customers", Reply::rate_limited());

    let page = client
        .list_page_with_backoff(
            Collection::Customers,
            &ListParams::new(2, &Cursor::Newest),
            &fast(),
        )
        .await
        .unwrap();
    let ids: Vec<_> = page
        .data
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cus_3", "cus_2"]);
    assert!(page.has_more);
    assert_eq!(stand_in.requests_to("GET", "/v1/customers").len(), 4);

    // Bounded: after `attempts` requests the last error comes back.
    for _ in 0..4 {
        stand_in.reply_once("GET", "/v1/customers", Reply::rate_limited());
    }
    let error = client
        .list_page_with_backoff(
            Collection::Customers,
            &ListParams::new(2, &Cursor::OlderThan("cus_2".into())),
            &fast(),
        )
        .await
        .unwrap_err();
    assert_eq!(error, StripeApiError::RateLimited);
    assert_eq!(stand_in.requests_to("GET", "/v1/customers").len(), 8);

    // A refusal is not retried.
    let error = client
        .list_page_with_backoff(
            Collection::Customers,
            &ListParams::new(2, &Cursor::OlderThan("cus_gone".into())),
            &fast(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StripeApiError::Rejected(_)), "{error}");
    assert_eq!(stand_in.requests_to("GET", "/v1/customers").len(), 9);
    let last = stand_in.requests_to("GET", "/v1/customers").pop().unwrap();
    assert_eq!(
        last.query_value("starting_after").as_deref(),
        Some("cus_gone")
    );
    assert_eq!(last.query_value("limit").as_deref(), Some("2"));
}
