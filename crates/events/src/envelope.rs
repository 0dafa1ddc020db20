//! The part of a Stripe event every service needs before it knows the event's
//! type: parsing only this keeps ingest fast and indifferent to payload shapes.

use serde::Deserialize;

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
    #[error("the body is not a JSON event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    #[error("the event `{0}` is empty")]
    Empty(&'static str),
    #[error("the event `{0}` is longer than 255 bytes or has control characters")]
    Invalid(&'static str),
}

impl EventEnvelope {
    /// Parses the envelope fields and validates the whole body is JSON; `data` is skipped, not built.
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        // serde_json skips the fields it does not read without checking their UTF-8,
        // which billing's parse of the whole value does check: a body with a broken
        // string anywhere would be published and then dead-lettered (found by fuzzing).
        let text = std::str::from_utf8(body).map_err(|_| EnvelopeError::NotUtf8)?;
        Self::checked(serde_json::from_str(text)?)
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
        // Invalid UTF-8 where the envelope does not look (fuzz/regressions/envelope/).
        let broken = b"{\"id\":\"evt_1\",\"type\":\"a\",\"created\":1,\"livemode\":false,\"data\":{\"object\":{\"note\":\"\xff\"}}}";
        assert!(matches!(
            EventEnvelope::parse(broken),
            Err(EnvelopeError::NotUtf8)
        ));
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
