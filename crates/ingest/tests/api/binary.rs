//! The real `ingest` binary: configuration errors, JSON logs without secrets or
//! personal data, and a clean exit on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tollgate_test_support::{TestVhost, fresh_event, signed_headers};

const FIXTURE_WITH_EMAIL: &str = "complete/invoice.finalized.stripe-sync-engine.json";
const SECRET: &str = "whsec_binary_test_secret_value";

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
    let vhost = TestVhost::create();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingest"))
        .env_clear()
        .env("AMQP_URL", vhost.amqp_url())
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("INGEST_ADDR", "127.0.0.1:0")
        .env("INGEST_WORKERS", "1")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut lines = Vec::new();
    // The "listening" line tells the port picked for 127.0.0.1:0.
    let port = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
            .await
            .expect("ingest logs within 20 s")
            .unwrap()
            .expect("ingest still running");
        let json: serde_json::Value = serde_json::from_str(&line).expect("every log line is JSON");
        lines.push(line);
        if json["message"] == "ingest listening" {
            break json["port"].as_u64().unwrap();
        }
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let ready = client.get(format!("{base}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (id, body) = fresh_event(FIXTURE_WITH_EMAIL, false);
    let accepted = client
        .post(format!("{base}/webhook"))
        .header("Stripe-Signature", signed_headers(SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let refused = client
        .post(format!("{base}/webhook"))
        .header("Stripe-Signature", signed_headers("whsec_someone_else", &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "clean exit: {exit:?}");
    while let Some(line) = stdout.next_line().await.unwrap() {
        lines.push(line);
    }

    let all = lines.join("\n");
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
    }
    assert!(all.contains(&id), "the event id is logged: {all}");
    assert!(all.contains("webhook signature refused"), "{all}");
    assert!(all.contains("ingest stopped"), "{all}");
    assert!(!all.contains(SECRET) && !all.contains("whsec_someone_else"), "no secret in logs");
    assert!(!all.contains("guest:guest"), "no broker credentials in logs");
    assert!(!all.contains("tesst@example.com"), "no email in logs");
}
