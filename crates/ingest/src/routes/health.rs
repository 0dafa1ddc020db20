use actix_web::{HttpResponse, web};
use serde_json::json;

use super::IngestState;

/// Liveness: the process is serving requests.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: a webhook would be stored now (the broker connection is up).
pub async fn readyz(state: web::Data<IngestState>) -> HttpResponse {
    if state.publisher.is_ready() {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "status": "broker unavailable" }))
    }
}

/// Prometheus exposition.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(tollgate_runtime::telemetry::metrics_handle().render())
}
