//! The real `ingest` binary: configuration errors, JSON logs without secrets or
//! personal data, and a clean exit on SIGTERM.

use tokio::process::Command;
use tollgate_test_support::{fresh_event, signed_headers};

use crate::helpers::{SECRET, TestAppBinary};

const FIXTURE_WITH_EMAIL: &str = "complete/invoice.finalized.stripe-sync-engine.json";
const EMAIL_IN_FIXTURE: &str = "tesst@example.com";

#[tokio::test]
async fn a_missing_variable_is_named_and_the_process_exits_non_zero() {
    let output = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env_clear()
        .env("AMQP_URL", "amqp://127.0.0.1:5672/%2f")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STRIPE_WEBHOOK_SECRET"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_json_carry_ids_not_secrets_or_emails_and_sigterm_exits_cleanly() {
    let mut app = TestAppBinary::spawn(&[("RUST_LOG", "debug".into())]).await;
    let body = std::fs::read_to_string(
        tollgate_test_support::fixtures::fixtures_dir().join(FIXTURE_WITH_EMAIL),
    )
    .unwrap();
    assert!(
        body.contains(EMAIL_IN_FIXTURE),
        "the fixture carries an email"
    );

    let (id, body) = fresh_event(FIXTURE_WITH_EMAIL, false);
    assert_eq!(
        app.post(&body, &signed_headers(SECRET, &body))
            .await
            .status(),
        200
    );
    let wrong = signed_headers("whsec_someone_else", &body);
    assert_eq!(app.post(&body, &wrong).await.status(), 400);
    app.terminate().await;

    for line in &app.lines {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    let all = app.lines.join("\n");
    assert!(all.contains(&id), "the event id is logged: {all}");
    assert!(all.contains("webhook signature refused"), "{all}");
    assert!(all.contains("ingest stopped"), "{all}");
    assert!(
        !all.contains(SECRET) && !all.contains("whsec_someone_else"),
        "no secret in logs"
    );
    assert!(
        !all.contains("guest:guest"),
        "no broker credentials in logs"
    );
    assert!(!all.contains(EMAIL_IN_FIXTURE), "no email in logs");
}
