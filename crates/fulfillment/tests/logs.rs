//! What a turn writes to the logs: ids, intent, outcome and latency; never an email
//! address or a secret. Its own test binary, since it installs the global subscriber.

#[allow(dead_code)]
#[path = "api/helpers.rs"]
mod helpers;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use helpers::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turns_are_logged_with_ids_never_emails_or_secrets() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_env_filter("tollgate_fulfillment=debug")
        .with_writer(move || writer.clone())
        .init();

    let mut entitlements = Entitlements::start().await;
    entitlements
        .customer("u_logged", "private.person@example.com", "active", "pro")
        .await;
    let billing = BillingApi::start(&entitlements).await;
    billing.next_checkout("cs_test_logged");
    let app = Fulfillment::start(Options::new(entitlements.url(), Some(&billing))).await;
    let user = Some(json!({ "email": "private.person@example.com" }));
    app.ask(&es_request("billing.status", user.clone(), json!({})))
        .await;
    app.ask(&es_request("billing.upgrade", user, json!({})))
        .await;
    app.ask(&cx_request(
        "billing.credits",
        json!({ "email": "nobody.known@example.com" }),
    ))
    .await;
    let (status, _) = app
        .post_raw(b"{}", &[("authorization", "Basic d3Jvbmc6d3Jvbmc=")])
        .await;
    assert_eq!(status, 401);
    app.stop().await;
    billing.stop().await;
    entitlements.stop().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for secret in [
        "private.person@example.com",
        "nobody.known@example.com",
        "@example.com",
        BASIC_PASSWORD,
        HEADER_TOKEN,
        ENTITLEMENTS_TOKEN,
        BILLING_TOKEN,
    ] {
        assert!(!logs.contains(secret), "`{secret}` in the logs:\n{logs}");
    }
    let turns: Vec<Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["message"] == "dialogflow turn")
        .collect();
    let summary: Vec<(Value, Value, Value, Value, Value, bool)> = turns
        .iter()
        .map(|event| {
            let span = &event["span"];
            (
                span["flavor"].clone(),
                span["session_id"].clone(),
                span["intent"].clone(),
                span["outcome"].clone(),
                span["user_id"].clone(),
                span["latency_ms"].is_number(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                json!("es"),
                json!("a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
                json!("billing.status"),
                json!("answered"),
                json!("u_logged"),
                true
            ),
            (
                json!("es"),
                json!("a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"),
                json!("billing.upgrade"),
                json!("answered"),
                json!("u_logged"),
                true
            ),
            (
                json!("cx"),
                json!("cx-session-5f0c9e1d"),
                json!("billing.credits"),
                json!("unknown_user"),
                Value::Null,
                true
            ),
        ]
    );
    assert!(logs.contains(r#""code":"unauthorized""#), "{logs}");
}
