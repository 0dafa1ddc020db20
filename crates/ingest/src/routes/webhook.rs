//! `POST /webhook`: verify, parse the envelope, publish with confirm, answer.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use actix_web::http::header::ContentType;
use actix_web::{HttpRequest, HttpResponse, web};
use metrics::{Counter, Histogram};
use tollgate_broker::Publisher;
use tollgate_broker::lapin::BasicProperties;
use tollgate_broker::lapin::types::{AMQPValue, FieldTable, LongString};
use tollgate_events::topology::{self, headers};
use tollgate_events::{EventEnvelope, WebhookSecrets};
use tollgate_runtime::read_limited;
use tracing::Instrument;

use crate::config::MAX_BODY_BYTES;
use crate::error::WebhookError;

pub struct IngestState {
    pub secrets: WebhookSecrets,
    pub tolerance_secs: u64,
    pub livemode: bool,
    pub publisher: Publisher,
}

/// The accepted outcome's series, registered once: every accepted webhook records
/// both, and a per-request lookup by name and label is measurable at full load.
/// (Created on first use, after `Application::build` has installed the recorder.)
struct AcceptedMetrics {
    total: Counter,
    duration: Histogram,
}

static ACCEPTED: LazyLock<AcceptedMetrics> = LazyLock::new(|| AcceptedMetrics {
    total: metrics::counter!("tollgate_ingest_webhooks_total", "outcome" => "accepted"),
    duration: metrics::histogram!("tollgate_ingest_request_duration_seconds", "outcome" => "accepted"),
});

/// The body of every 200 answer (what `json!({ "received": true })` serialises to).
const RECEIVED_BODY: &str = r#"{"received":true}"#;

pub async fn receive_webhook(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<IngestState>,
) -> Result<HttpResponse, WebhookError> {
    let started = Instant::now();
    // The HTTP server span: the root of the webhook's trace.
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/webhook",
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty
    );
    let result = handle(&request, payload, &state, &span)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    match &result {
        Ok(_) => {
            ACCEPTED.total.increment(1);
            ACCEPTED.duration.record(elapsed);
        }
        Err(e) => {
            let outcome = e.code();
            metrics::counter!("tollgate_ingest_webhooks_total", "outcome" => outcome).increment(1);
            metrics::histogram!("tollgate_ingest_request_duration_seconds", "outcome" => outcome)
                .record(elapsed);
        }
    }
    let _entered = span.enter();
    match &result {
        Ok(_) => tracing::debug!("event accepted"),
        Err(WebhookError::Signature(e)) => {
            metrics::counter!("tollgate_ingest_signature_failures_total", "reason" => e.reason())
                .increment(1);
            tracing::warn!(reason = e.reason(), "webhook signature refused");
        }
        Err(WebhookError::Unavailable(e)) => {
            tracing::error!(error = %e, "event not published; answering 503")
        }
        Err(e) => tracing::warn!(code = e.code(), error = %e, "webhook refused"),
    }
    result
}

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &IngestState,
    span: &tracing::Span,
) -> Result<HttpResponse, WebhookError> {
    let declared_length = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    // Refused over `MAX_BODY_BYTES` without buffering it.
    let body = read_limited(declared_length, payload, MAX_BODY_BYTES).await?;

    // Authenticate before parsing anything the sender controls.
    let header = request
        .headers()
        .get("Stripe-Signature")
        .ok_or(tollgate_events::SignatureError::MissingHeader)?
        .to_str()
        .map_err(|_| tollgate_events::SignatureError::MalformedHeader)?;
    let now = unix_now();
    state
        .secrets
        .verify(header, &body, now, state.tolerance_secs)?;

    let envelope = EventEnvelope::parse(&body)?;
    span.record("event_id", envelope.id.as_str());
    span.record("event_type", envelope.event_type.as_str());
    if envelope.livemode != state.livemode {
        return Err(WebhookError::LivemodeMismatch {
            event: envelope.livemode,
            configured: state.livemode,
        });
    }

    // The publish is a span of its own (the producer), and the message names it as
    // the parent of billing's work.
    let publish_span = tracing::info_span!(
        parent: span,
        "amqp_publish",
        otel.kind = "producer",
        messaging.system = "rabbitmq",
        messaging.destination.name = topology::EVENTS_EXCHANGE,
        messaging.rabbitmq.destination.routing_key = envelope.event_type.as_str(),
        messaging.message.id = envelope.id.as_str(),
    );
    let properties = message_properties(&envelope, now, traceparent(&publish_span));
    state
        .publisher
        .publish(
            topology::EVENTS_EXCHANGE,
            &envelope.event_type,
            &body,
            properties,
        )
        .instrument(publish_span)
        .await?;
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(RECEIVED_BODY))
}

fn message_properties(envelope: &EventEnvelope, now: i64, traceparent: String) -> BasicProperties {
    let mut message_headers = FieldTable::default();
    message_headers.insert(
        headers::API_VERSION.into(),
        envelope
            .api_version
            .as_deref()
            .map_or(AMQPValue::Void, |v| {
                AMQPValue::LongString(LongString::from(v))
            }),
    );
    message_headers.insert(
        headers::LIVEMODE.into(),
        AMQPValue::Boolean(envelope.livemode),
    );
    message_headers.insert(
        headers::CREATED.into(),
        AMQPValue::LongLongInt(envelope.created),
    );
    message_headers.insert(
        headers::TRACEPARENT.into(),
        AMQPValue::LongString(LongString::from(traceparent)),
    );
    if let Some(account) = &envelope.account {
        message_headers.insert(
            headers::ACCOUNT.into(),
            AMQPValue::LongString(LongString::from(account.as_str())),
        );
    }
    BasicProperties::default()
        .with_message_id(envelope.id.as_str().into())
        .with_type(envelope.event_type.as_str().into())
        .with_timestamp(u64::try_from(now).unwrap_or(0))
        .with_content_type(topology::CONTENT_TYPE_JSON.into())
        .with_delivery_mode(topology::PERSISTENT)
        .with_app_id("tollgate-ingest".into())
        .with_headers(message_headers)
}

/// W3C `traceparent` of the publish span, so billing's work joins the same trace.
/// Without a tracing pipeline (e.g. in-process tests) a fresh random trace is used.
fn traceparent(span: &tracing::Span) -> String {
    if let Some(traceparent) = tollgate_runtime::propagation::traceparent(span) {
        traceparent
    } else {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let span_id = &uuid::Uuid::new_v4().simple().to_string()[..16];
        format!("00-{random}-{span_id}-01")
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
