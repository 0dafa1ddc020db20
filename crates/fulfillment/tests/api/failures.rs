//! Slow or broken dependencies: Dialogflow still gets a 200 with a graceful answer
//! (it would otherwise give up after 5 s and say nothing useful).

use std::time::Duration;

use serde_json::json;
use tollgate_test_support::{Reply, TcpProxy};

use crate::helpers::*;

const FALLBACK: &str = "Sorry, I can't reach the billing system right now. Please try again in a minute, or see your billing page: https://app.example.com/billing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_entitlements_gets_the_timeout_fallback() {
    let (silent, _listener) = silent_listener().await;
    let app = Fulfillment::start(Options {
        timeout_ms: 300,
        ..Options::new(silent, None)
    })
    .await;
    let es = app
        .ask(&es_request(
            "billing.status",
            Some(json!({ "userId": "u_ada" })),
            json!({}),
        ))
        .await;
    assert_eq!(es_text(&es), FALLBACK);
    assert_eq!(
        es["payload"]["tollgate"],
        json!({ "intent": "billing.status", "outcome": "upstream_timeout" })
    );
    let cx = app
        .ask(&cx_request(
            "billing.features",
            json!({ "user_id": "u_ada", "feature": "sso" }),
        ))
        .await;
    assert_eq!(cx_text(&cx), FALLBACK);
    assert_eq!(cx["payload"]["tollgate"]["outcome"], "upstream_timeout");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"status":"entitlements unavailable"}"#)
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains(r#"tollgate_fulfillment_upstream_calls_total{upstream="entitlements",call="GetEntitlements",outcome="timeout"}"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_entitlements_gets_the_error_fallback_and_recovers() {
    let mut entitlements = Entitlements::start().await;
    let customer = entitlements
        .customer("u_cut", "cut@example.com", "active", "pro")
        .await;
    entitlements.set_balance(customer, 7).await;
    let proxy = TcpProxy::start(&entitlements.addr.to_string()).await;
    let app = Fulfillment::start(Options::new(format!("http://{}", proxy.addr()), None)).await;
    let ask = || cx_request("billing.credits", json!({ "user_id": "u_cut" }));
    assert_eq!(cx_text(&app.ask(&ask()).await), "You have 7 credits.");

    proxy.cut();
    let cut = app.ask(&ask()).await;
    assert_eq!(cx_text(&cut), FALLBACK);
    assert_eq!(cut["payload"]["tollgate"]["outcome"], "upstream_error");

    // Restored: answers come back (the channel reconnects on its own).
    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let answer = app.ask(&ask()).await;
        if cx_text(&answer) == "You have 7 credits." {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still failing: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
    entitlements.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_api_failures_fall_back_to_the_billing_page() {
    let mut entitlements = Entitlements::start().await;
    entitlements
        .customer("u_page", "page@example.com", "active", "pro")
        .await;
    let user = json!({ "user_id": "u_page" });

    // Billing answers 503: Stripe, behind it, fails.
    let billing = BillingApi::start(&entitlements).await;
    for path in ["/v1/checkout/sessions", "/v1/billing_portal/sessions"] {
        billing.stripe.reply("POST", path, Reply::server_error());
    }
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/portal/sessions", billing.url))
        .bearer_auth(BILLING_TOKEN)
        .json(&json!({ "user_id": "u_page" }))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status().as_u16(), 503);
    let app = Fulfillment::start(Options::new(entitlements.url(), Some(&billing))).await;
    let upgrade = app.ask(&cx_request("billing.upgrade", user.clone())).await;
    assert_eq!(
        cx_text(&upgrade),
        format!("You can upgrade on your billing page: {BILLING_PAGE}")
    );
    assert_eq!(upgrade["payload"]["tollgate"]["outcome"], "upstream_error");
    let manage = app
        .ask(&es_request(
            "billing.manage",
            Some(json!({ "userId": "u_page" })),
            json!({}),
        ))
        .await;
    assert_eq!(
        es_text(&manage),
        format!("You can manage your billing on your billing page: {BILLING_PAGE}")
    );
    let asked: Vec<String> = billing
        .stripe_posts()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(
        asked,
        [
            "/v1/billing_portal/sessions",
            "/v1/checkout/sessions",
            "/v1/billing_portal/sessions"
        ],
        "billing was asked (after the direct call), asked Stripe, and failed"
    );
    app.stop().await;

    // Billing hangs.
    let (silent, _listener) = silent_listener().await;
    let app = Fulfillment::start(Options {
        billing_api_url: Some(silent),
        timeout_ms: 300,
        ..Options::new(entitlements.url(), None)
    })
    .await;
    let upgrade = app.ask(&cx_request("billing.upgrade", user.clone())).await;
    assert_eq!(
        cx_text(&upgrade),
        format!("You can upgrade on your billing page: {BILLING_PAGE}")
    );
    assert_eq!(
        upgrade["payload"]["tollgate"]["outcome"],
        "upstream_timeout"
    );
    app.stop().await;

    // No billing API configured: the page, as a normal answer.
    let app = Fulfillment::start(Options::new(entitlements.url(), None)).await;
    let manage = app.ask(&cx_request("billing.manage", user.clone())).await;
    assert_eq!(
        cx_text(&manage),
        format!("You can manage your billing on your billing page: {BILLING_PAGE}")
    );
    assert_eq!(manage["payload"]["tollgate"]["outcome"], "answered");
    app.stop().await;

    // Neither the API nor a page: the fallback apology.
    let app = Fulfillment::start(Options {
        extra: vec![("FULFILLMENT_BILLING_PAGE_URL", String::new())],
        ..Options::new(entitlements.url(), Some(&billing))
    })
    .await;
    let upgrade = app.ask(&cx_request("billing.upgrade", user)).await;
    assert_eq!(
        cx_text(&upgrade),
        "Sorry, I can't reach the billing system right now. Please try again in a minute."
    );
    app.stop().await;
    billing.stop().await;
    entitlements.stop().await;
}
