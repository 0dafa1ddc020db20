//! The `traceparent` message header: how a trace crosses the broker.
//!
//! A publisher names the span that published (`with_traceparent`); a consumer
//! makes its span a child of that one (`continue_from`). See
//! `tollgate_runtime::propagation` for the string itself.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, LongString};
use tollgate_events::topology::headers;
use tollgate_runtime::propagation;

/// `properties` with the `traceparent` of `span` added (unchanged when the span
/// has no valid trace context).
pub fn with_traceparent(properties: BasicProperties, span: &tracing::Span) -> BasicProperties {
    let Some(traceparent) = propagation::traceparent(span) else {
        return properties;
    };
    let mut table = properties.headers().clone().unwrap_or_default();
    table.insert(
        headers::TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    properties.with_headers(table)
}

/// The `traceparent` header of a message, if it has one.
pub fn traceparent(properties: &BasicProperties) -> Option<String> {
    match properties
        .headers()
        .as_ref()?
        .inner()
        .get(headers::TRACEPARENT)?
    {
        AMQPValue::LongString(value) => Some(value.to_string()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_string()),
        _ => None,
    }
}

/// Makes `span` (just created, not yet entered) a child of the span that
/// published the message; returns whether the message carried a usable one.
pub fn continue_from(span: &tracing::Span, properties: &BasicProperties) -> bool {
    propagation::continue_trace(span, traceparent(properties).as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldTable;

    #[test]
    fn the_header_is_read_in_either_string_type() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut table = FieldTable::default();
        table.insert(
            headers::TRACEPARENT.into(),
            AMQPValue::LongString(LongString::from(value)),
        );
        let long = BasicProperties::default().with_headers(table);
        assert_eq!(traceparent(&long).as_deref(), Some(value));

        let mut table = FieldTable::default();
        table.insert(
            headers::TRACEPARENT.into(),
            AMQPValue::ShortString(value.into()),
        );
        let short = BasicProperties::default().with_headers(table);
        assert_eq!(traceparent(&short).as_deref(), Some(value));

        assert_eq!(traceparent(&BasicProperties::default()), None);
    }

    #[test]
    fn without_a_trace_context_the_properties_are_left_alone() {
        let span = tracing::info_span!("no subscriber");
        let properties = with_traceparent(BasicProperties::default(), &span);
        assert!(properties.headers().is_none());
    }
}
