//! W3C trace context across process boundaries, as one `traceparent` string.
//!
//! A webhook's trace crosses three processes and two hops that are not HTTP:
//! AMQP messages (a `traceparent` header) and billing's outbox table (a
//! `traceparent` column). Both carry just the string, so this module converts
//! between it and `tracing` spans; the broker and database code stay free of
//! OpenTelemetry types.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// One `traceparent` value, seen through the propagator's carrier traits.
#[derive(Default)]
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The `traceparent` naming `span`, or `None` when the span has no valid trace
/// context (it is disabled by the log filter, or no tracing pipeline is installed).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// The remote span a `traceparent` names, if it is well-formed.
fn remote(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = Carrier(Some(traceparent.to_string()));
    let context = TraceContextPropagator::new()
        .extract_with_context(&opentelemetry::Context::new(), &carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the remote span `traceparent` names, so the work it
/// covers joins the caller's trace. Call right after creating the span, before it
/// is entered. Returns false (the span keeps its own parent, or starts a trace)
/// when the value is absent or malformed, or the span is disabled.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) -> bool {
    match traceparent.and_then(remote) {
        Some(parent) => span.set_parent(parent).is_ok(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_traceparent_is_read_back_and_garbage_is_not() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = remote(value).expect("valid");
        let span = context.span();
        let span_context = span.span_context();
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context.is_sampled());
        assert!(span_context.is_remote());
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "not a traceparent",
        ] {
            assert!(remote(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn without_a_tracing_pipeline_there_is_nothing_to_propagate() {
        let span = tracing::info_span!("no subscriber");
        assert_eq!(traceparent(&span), None);
        assert!(!continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        ));
    }

    #[test]
    fn a_span_continues_the_remote_trace_unless_it_already_started() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt;

        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(subscriber, || {
            let child = tracing::info_span!("child");
            assert!(continue_trace(&child, Some(upstream)));
            let own = traceparent(&child).expect("a valid context");
            let parts: Vec<&str> = own.split('-').collect();
            assert_eq!(parts.len(), 4, "{own}");
            assert_eq!(parts[0], "00");
            assert_eq!(parts[1], "4bf92f3577b34da6a3ce929d0e0e4736", "same trace");
            assert_ne!(parts[2], "00f067aa0ba902b7", "a span of its own");
            assert_eq!(parts[3], "01", "still sampled");

            // Too late: a started span keeps its parent.
            let started = tracing::info_span!("started");
            let own_trace = traceparent(&started).expect("a valid context");
            assert!(!continue_trace(&started, Some(upstream)));
            assert_eq!(traceparent(&started), Some(own_trace));
            assert_ne!(
                traceparent(&started).unwrap().split('-').nth(1),
                Some(parts[1])
            );
        });
    }
}
