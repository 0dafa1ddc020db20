//! Real Stripe payloads (tests/fixtures/stripe, see SOURCES.md there).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_events::SigningSecret;
use tollgate_events::signature::sign_header;

pub fn fixtures_dir() -> PathBuf {
    crate::workspace_root().join("tests/fixtures/stripe")
}

/// Raw bytes of a fixture, e.g. `stripe_fixture("complete/invoice.paid.stripe-sync-engine.json")`.
pub fn stripe_fixture(relative: &str) -> Vec<u8> {
    let path = fixtures_dir().join(relative);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A fixture event with a fresh unique id and the given livemode, serialised
/// compactly (Stripe's own bodies are pretty-printed; both are valid).
pub fn fresh_event(relative: &str, livemode: bool) -> (String, Vec<u8>) {
    let mut event: serde_json::Value =
        serde_json::from_slice(&stripe_fixture(relative)).expect("fixture is JSON");
    let id = format!("evt_test_{}", uuid::Uuid::new_v4().simple());
    event["id"] = id.clone().into();
    event["livemode"] = livemode.into();
    (id, serde_json::to_vec(&event).expect("serialisable"))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `Stripe-Signature` for `body` signed now with `secret`.
pub fn signed_headers(secret: &str, body: &[u8]) -> String {
    sign_header(&SigningSecret::new(secret), unix_now(), body)
}

/// One of Stripe's own example objects (`objects/<name>.openapi-fixtures3.json`), e.g.
/// `stripe_object("subscription")`: what the API answers for a retrieve.
pub fn stripe_object(name: &str) -> serde_json::Value {
    serde_json::from_slice(&stripe_fixture(&format!(
        "objects/{name}.openapi-fixtures3.json"
    )))
    .expect("fixture is JSON")
}

/// Stripe's example subscription, made a live one of ours: `id` of `customer` in `status`
/// on `price` (one item, a 30-day period from 2025-10-09), not cancelling.
pub fn subscription_object(
    id: &str,
    customer: &str,
    status: &str,
    price: &str,
) -> serde_json::Value {
    const PERIOD_START: i64 = 1_760_000_000;
    let mut object = stripe_object("subscription");
    object["id"] = id.into();
    object["customer"] = customer.into();
    object["status"] = status.into();
    for field in ["cancel_at", "canceled_at", "ended_at", "trial_end"] {
        object[field] = serde_json::Value::Null;
    }
    object["cancel_at_period_end"] = false.into();
    object["pause_collection"] = serde_json::Value::Null;
    let item = &mut object["items"]["data"][0];
    item["subscription"] = id.into();
    item["price"]["id"] = price.into();
    item["plan"]["id"] = price.into();
    item["current_period_start"] = PERIOD_START.into();
    item["current_period_end"] = (PERIOD_START + 30 * 86_400).into();
    object
}

/// Stripe's example invoice (2025 shape: the subscription under `parent`), made ours:
/// `id` of `customer` for `subscription`, in `status` (`open` ones attempted and unpaid,
/// `paid` ones paid in full), created at `created`.
pub fn invoice_object(
    id: &str,
    customer: &str,
    subscription: &str,
    status: &str,
    created: i64,
) -> serde_json::Value {
    let mut object = stripe_object("invoice");
    object["id"] = id.into();
    object["customer"] = customer.into();
    object["parent"] = serde_json::json!({
        "type": "subscription_details", "quote_details": null,
        "subscription_details": { "metadata": {}, "subscription": subscription }
    });
    object["status"] = status.into();
    object["created"] = created.into();
    object["billing_reason"] = "subscription_cycle".into();
    let amount = object["amount_due"].clone();
    match status {
        "paid" => {
            object["attempted"] = true.into();
            object["attempt_count"] = 1.into();
            object["amount_paid"] = amount;
            object["amount_remaining"] = 0.into();
            object["status_transitions"]["paid_at"] = created.into();
        }
        "open" => {
            object["attempted"] = true.into();
            object["attempt_count"] = 1.into();
        }
        _ => {}
    }
    object
}

/// Serves `tests/fixtures/jwt/jwks.json` (the public half of `rs256-test-key.pem`)
/// over plain HTTP on a loopback port until the test's runtime ends; answers its URL,
/// for a service's `*_JWKS_URL`.
pub async fn serve_test_jwks() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port");
    let addr = listener.local_addr().expect("bound");
    let path = crate::workspace_root().join("tests/fixtures/jwt/jwks.json");
    let body = std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 2048];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}
