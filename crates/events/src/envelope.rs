//! The part of a Stripe event every service needs before it knows the event's
//! type: parsing only this keeps ingest fast and indifferent to payload shapes.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};

/// AMQP short strings (message id, type) are at most 255 bytes.
pub const MAX_ID_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventEnvelope {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unix seconds when Stripe created the event.
    pub created: i64,
    pub livemode: bool,
    #[serde(default)]
    pub api_version: Option<String>,
    /// Connected account the event belongs to (Stripe Connect), if any.
    #[serde(default)]
    pub account: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Printed as its kind and position only: serde's own message quotes the offending
    /// value ("invalid type: string \"someone@example.com\""), which would carry a
    /// payload's personal data into logs and dead-letter reasons.
    #[error(
        "the body is not a JSON event ({}, at line {} column {})",
        json_error_kind(.0),
        .0.line(),
        .0.column()
    )]
    Json(#[from] serde_json::Error),
    #[error("the event `{0}` is empty")]
    Empty(&'static str),
    #[error("the event `{0}` is longer than 255 bytes or has control characters")]
    Invalid(&'static str),
}

impl EventEnvelope {
    /// Parses the envelope fields and validates the whole body is JSON as billing
    /// reads it; `data` is checked, not built.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        // serde_json skips the fields a struct does not name without checking their
        // strings' UTF-8, their numbers' range or their depth, all of which billing's
        // parse into a `serde_json::Value` does check: such a body would be published,
        // then dead-lettered (found by fuzzing, fuzz/regressions/envelope/).
        serde_json::from_slice::<WellFormed>(body)?;
        Self::checked(serde_json::from_slice(body)?)
    }

    /// The envelope of an event already parsed as JSON (for callers that need the
    /// whole value too, so the body is parsed once).
    pub fn from_value(event: &serde_json::Value) -> Result<Self, EnvelopeError> {
        Self::checked(Self::deserialize(event)?)
    }

    fn checked(envelope: Self) -> Result<Self, EnvelopeError> {
        check_token("id", &envelope.id)?;
        check_token("type", &envelope.event_type)?;
        Ok(envelope)
    }
}

fn json_error_kind(error: &serde_json::Error) -> &'static str {
    match error.classify() {
        serde_json::error::Category::Syntax => "malformed JSON",
        serde_json::error::Category::Data => "a field is missing or of the wrong type",
        serde_json::error::Category::Eof => "the JSON ends early",
        serde_json::error::Category::Io => "the body could not be read",
    }
}

/// A JSON value read to the end as `serde_json::Value` reads it (every string
/// decoded, every number converted, nesting within serde_json's depth limit),
/// without building it.
struct WellFormed;

impl<'de> Deserialize<'de> for WellFormed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(WellFormed)
    }
}

impl<'de> Visitor<'de> for WellFormed {
    type Value = WellFormed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<WellFormed>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Self, A::Error> {
        while entries.next_entry::<WellFormed, WellFormed>()?.is_some() {}
        Ok(self)
    }
}

fn check_token(field: &'static str, value: &str) -> Result<(), EnvelopeError> {
    if value.is_empty() {
        return Err(EnvelopeError::Empty(field));
    }
    if value.len() > MAX_ID_LEN || value.chars().any(char::is_control) {
        return Err(EnvelopeError::Invalid(field));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_event_and_ignores_the_rest() {
        // Source: supabase/stripe-sync-engine (tests/fixtures/stripe/SOURCES.md).
        let body = include_bytes!(
            "../../../tests/fixtures/stripe/complete/invoice.paid.stripe-sync-engine.json"
        );
        let envelope = EventEnvelope::parse(body).unwrap();
        assert_eq!(envelope.id, "evt_1KJrGtJDPojXS6LN15fcthM3");
        assert_eq!(envelope.event_type, "invoice.paid");
        assert_eq!(envelope.created, 1642649111);
        assert!(!envelope.livemode);
        assert_eq!(envelope.api_version.as_deref(), Some("2020-03-02"));
        assert_eq!(envelope.account, None);
    }

    #[test]
    fn from_value_agrees_with_parse() {
        let body =
            br#"{"id":"evt_1","type":"a.b","created":7,"livemode":false,"data":{"object":{}}}"#;
        let value: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(
            EventEnvelope::from_value(&value).unwrap(),
            EventEnvelope::parse(body).unwrap()
        );
        let no_id = serde_json::json!({ "id": "", "type": "a", "created": 1, "livemode": false });
        assert!(matches!(
            EventEnvelope::from_value(&no_id),
            Err(EnvelopeError::Empty("id"))
        ));
    }

    #[test]
    fn connect_account_and_null_api_version() {
        let body = br#"{"id":"evt_1","type":"a.b","created":1,"livemode":true,"api_version":null,"account":"acct_9"}"#;
        let envelope = EventEnvelope::parse(body).unwrap();
        assert_eq!(envelope.api_version, None);
        assert_eq!(envelope.account.as_deref(), Some("acct_9"));
    }

    #[test]
    fn json_errors_never_quote_the_body() {
        let body = br#"{"id":"evt_1","type":"a","created":"someone@example.com","livemode":false}"#;
        let error = EventEnvelope::parse(body).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the body is not a JSON event (a field is missing or of the wrong type, at line 1 column 56)"
        );
        let truncated = EventEnvelope::parse(br#"{"id":"evt_1","type":"#).unwrap_err();
        assert!(
            truncated.to_string().contains("the JSON ends early"),
            "{truncated}"
        );
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        for body in [
            &b"not json"[..],
            b"{\"id\":\"evt_1\",\"type\":\"a\",\"created\":1,\"livemode\":false",
            b"[]",
            br#"{"type":"a","created":1,"livemode":false}"#,
            br#"{"id":"evt_1","created":1,"livemode":false}"#,
            br#"{"id":"evt_1","type":"a","created":1}"#,
            br#"{"id":7,"type":"a","created":1,"livemode":false}"#,
        ] {
            assert!(
                matches!(EventEnvelope::parse(body), Err(EnvelopeError::Json(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let empty_id = br#"{"id":"","type":"a","created":1,"livemode":false}"#;
        assert!(matches!(
            EventEnvelope::parse(empty_id),
            Err(EnvelopeError::Empty("id"))
        ));
        // What billing could not read, where the envelope does not look
        // (fuzz/regressions/envelope/).
        let event = |data: &[u8]| {
            let mut body =
                br#"{"id":"evt_1","type":"a","created":1,"livemode":false,"data":"#.to_vec();
            body.extend_from_slice(data);
            body.push(b'}');
            body
        };
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for data in [
            &b"{\"object\":{\"note\":\"\xff\"}}"[..],
            br#"{"object":{"created":13.6E66543}}"#,
            br#"{"object":{"\ud800":1}}"#,
            deep.as_bytes(),
        ] {
            let body = event(data);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
            assert!(
                matches!(EventEnvelope::parse(&body), Err(EnvelopeError::Json(_))),
                "{}",
                String::from_utf8_lossy(data)
            );
        }
        assert!(EventEnvelope::parse(&event(b"[1, -0.5e3, \"\\u00e9\", {}]")).is_ok());
        let long_type = format!(
            r#"{{"id":"evt","type":"{}","created":1,"livemode":false}}"#,
            "a".repeat(256)
        );
        assert!(matches!(
            EventEnvelope::parse(long_type.as_bytes()),
            Err(EnvelopeError::Invalid("type"))
        ));
    }
}
