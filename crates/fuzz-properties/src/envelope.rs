//! The event envelope: what ingest reads of every body (`EventEnvelope::parse`) and
//! billing of the same body parsed as a JSON value (`EventEnvelope::from_value`).
//!
//! Input: a webhook body.

use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use tollgate_events::envelope::MAX_ID_LEN;
use tollgate_events::{EnvelopeError, EventEnvelope};

pub fn check(data: &[u8]) {
    let parsed = EventEnvelope::parse(data);
    if let Ok(envelope) = &parsed {
        assert_token(&envelope.id);
        assert_token(&envelope.event_type);
        assert_eq!(&reparsed(envelope), envelope, "rendered and parsed again");
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        // Not JSON, or nested past serde_json's depth limit: ingest must refuse it too,
        // or billing would receive a body it cannot read.
        assert!(
            matches!(parsed, Err(EnvelopeError::Json(_))),
            "ingest accepted a body that is not a JSON value: {parsed:?}"
        );
        return;
    };
    let from_value = EventEnvelope::from_value(&value);
    match (&parsed, &from_value) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        // A JSON value keeps the last of repeated keys where ingest refuses the body:
        // billing only ever sees what ingest accepted.
        (Err(EnvelopeError::Json(_)), _) if has_repeated_key(data) => {}
        (Err(a), Err(b)) => assert_eq!(kind(a), kind(b), "{a} / {b}"),
        _ => panic!("ingest says {parsed:?}, billing says {from_value:?}"),
    }
}

/// An id or type that fits an AMQP short string and prints on one line.
fn assert_token(value: &str) {
    assert!(!value.is_empty() && value.len() <= MAX_ID_LEN);
    assert!(!value.chars().any(char::is_control));
}

fn reparsed(envelope: &EventEnvelope) -> EventEnvelope {
    let rendered = serde_json::json!({
        "id": envelope.id,
        "type": envelope.event_type,
        "created": envelope.created,
        "livemode": envelope.livemode,
        "api_version": envelope.api_version,
        "account": envelope.account,
        "data": {"object": {}},
    });
    EventEnvelope::parse(rendered.to_string().as_bytes()).expect("a rendered envelope parses")
}

/// Which error, without the JSON error's position (which the two paths word differently).
fn kind(error: &EnvelopeError) -> String {
    match error {
        EnvelopeError::Json(_) => "json".to_string(),
        other => other.to_string(),
    }
}

/// Whether the body's top-level object names a key twice.
fn has_repeated_key(data: &[u8]) -> bool {
    struct Keys(bool);
    impl<'de> Deserialize<'de> for Keys {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            deserializer.deserialize_map(KeysVisitor)
        }
    }
    struct KeysVisitor;
    impl<'de> Visitor<'de> for KeysVisitor {
        type Value = Keys;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Keys, A::Error> {
            let mut seen = std::collections::BTreeSet::new();
            let mut repeated = false;
            while let Some(key) = map.next_key::<String>()? {
                repeated |= !seen.insert(key);
                map.next_value::<IgnoredAny>()?;
            }
            Ok(Keys(repeated))
        }
    }
    serde_json::from_slice::<Keys>(data).is_ok_and(|keys| keys.0)
}
