//! `POST /webhook` (authenticate, parse, answer) and the probes.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use tollgate_runtime::read_limited;
use tracing::Instrument;

use crate::answers::Responder;
use crate::auth::Authenticator;
use crate::config::MAX_BODY_BYTES;
use crate::dialogflow;
use crate::error::WebhookError;

pub struct State {
    pub auth: Authenticator,
    pub responder: Responder,
}

pub async fn webhook(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, WebhookError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "dialogflow_turn",
        flavor = tracing::field::Empty,
        session_id = tracing::field::Empty,
        response_id = tracing::field::Empty,
        source = tracing::field::Empty,
        intent = tracing::field::Empty,
        answer = tracing::field::Empty,
        user_kind = tracing::field::Empty,
        user_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let result = handle(&request, payload, &state, &span)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let _entered = span.enter();
    span.record("latency_ms", elapsed.as_secs_f64() * 1000.0);
    match &result {
        Ok((flavor, intent, outcome, _)) => {
            span.record("outcome", *outcome);
            metrics::counter!("tollgate_fulfillment_requests_total",
                "flavor" => *flavor, "intent" => *intent, "outcome" => *outcome)
            .increment(1);
            record_duration(outcome, elapsed);
            tracing::info!("dialogflow turn");
        }
        Err(error) => {
            let code = error.code();
            span.record("outcome", code);
            metrics::counter!("tollgate_fulfillment_requests_total",
                "flavor" => "none", "intent" => "none", "outcome" => code)
            .increment(1);
            record_duration(code, elapsed);
            // The error's text may quote the body's JSON; only the code is logged.
            tracing::warn!(code, "webhook request refused");
        }
    }
    result.map(|(_, _, _, response)| response)
}

fn record_duration(outcome: &'static str, elapsed: Duration) {
    metrics::histogram!("tollgate_fulfillment_request_duration_seconds", "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

type Handled = (&'static str, &'static str, &'static str, HttpResponse);

async fn handle(
    request: &HttpRequest,
    payload: web::Payload,
    state: &State,
    span: &tracing::Span,
) -> Result<Handled, WebhookError> {
    // Authenticate before reading anything the sender controls.
    if !state.auth.admits(request.headers()) {
        return Err(WebhookError::Unauthorized {
            basic: state.auth.offers_basic(),
        });
    }
    let declared_length = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok());
    // Refused over `MAX_BODY_BYTES` without buffering it.
    let body = read_limited(declared_length, payload, MAX_BODY_BYTES).await?;
    let turn = dialogflow::parse(&body)?;
    span.record("flavor", turn.flavor.as_str());
    span.record("session_id", turn.session_id());
    span.record("response_id", turn.response_id.as_str());
    span.record("intent", turn.label());
    if !turn.source.is_empty() {
        span.record("source", turn.source.as_str());
    }
    if let Some(user) = &turn.user {
        span.record("user_kind", user.kind());
        if let dialogflow::UserRef::UserId(id) = user {
            span.record("user_id", id.as_str());
        }
    }
    let reply = state.responder.reply(&turn).await;
    let answer = reply.intent.map_or("unknown", |i| i.as_str());
    span.record("answer", answer);
    if let Some(id) = &reply.user_id {
        span.record("user_id", id.as_str());
    }
    let body = dialogflow::render(&turn, &reply.answer);
    Ok((
        turn.flavor.as_str(),
        answer,
        reply.outcome.as_str(),
        HttpResponse::Ok().json(body),
    ))
}

/// Liveness: the process is serving requests.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: entitlements reports itself serving fresh answers. Billing's API is
/// not required: without it, upgrade and manage answers fall back to the page.
pub async fn readyz(state: web::Data<State>) -> HttpResponse {
    if state
        .responder
        .entitlements
        .ready(state.responder.per_call)
        .await
    {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "entitlements unavailable" }))
    }
}

/// Prometheus exposition.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(tollgate_runtime::telemetry::metrics_handle().render())
}
