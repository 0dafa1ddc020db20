//! Billing's small HTTP port: liveness, readiness and Prometheus metrics, for
//! Kubernetes probes and scraping. The public API is apart, on its own listener
//! (crate::api, `BILLING_API_ADDR`).

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;

struct Probes {
    pool: PgPool,
    consuming: watch::Receiver<bool>,
}

/// Binds `listener` and serves on one worker thread.
pub fn serve(
    listener: TcpListener,
    pool: PgPool,
    consuming: watch::Receiver<bool>,
) -> std::io::Result<Server> {
    let state = web::Data::new(Probes { pool, consuming });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run())
}

/// Liveness: the process answers.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness: attached to the queue and the database answers. Not ready means
/// "do not count this replica", never "restart it": billing reconnects itself.
async fn readyz(state: web::Data<Probes>) -> HttpResponse {
    if !*state.consuming.borrow() {
        return HttpResponse::ServiceUnavailable().json(json!({ "status": "not consuming" }));
    }
    let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.pool);
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        _ => HttpResponse::ServiceUnavailable().json(json!({ "status": "database unavailable" })),
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(tollgate_runtime::telemetry::metrics_handle().render())
}
