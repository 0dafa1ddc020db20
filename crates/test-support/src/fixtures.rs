//! Real Stripe payloads (tests/fixtures/stripe, see SOURCES.md there).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use tollgate_events::SigningSecret;
use tollgate_events::signature::sign_header;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/stripe")
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
