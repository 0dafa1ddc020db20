//! The HTTP API for frontends and internal services, under `/v1` (docs/api.md,
//! docs/openapi.json): checkout and portal sessions, billing status and history, payment
//! verification for services, token introspection, and operator endpoints. Served by
//! billing on its own listener (`BILLING_API_ADDR`), apart from the probes and metrics.
//!
//! Every request is authenticated (a user's JWT, a service token, an admin token) and
//! rate-limited per caller; users only ever see their own billing. Responses carry
//! security headers and `Cache-Control: no-store`; errors are
//! `{"error": {"code", "message"}}` with a stable code. The same listener serves the
//! billing page (`/billing`, [`page`]) that uses this API from the browser.

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod errors;
pub mod openapi;
pub mod page;
pub mod reads;
pub mod sessions;
pub mod status;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use actix_cors::Cors;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpServer, Route, web};
use sqlx::PgPool;
use tollgate_plans::Plans;
use tracing::Instrument;

use crate::account::Account;
pub use auth::Caller;
pub use config::ApiConfig;
use errors::ApiError;

/// What every handler shares.
pub struct ApiState {
    pub pool: PgPool,
    pub plans: Arc<Plans>,
    /// Checkout and portal sessions; `None` without `STRIPE_SECRET_KEY` and the
    /// `CHECKOUT_*` / `PORTAL_RETURN_URL` settings (those endpoints then answer 503).
    pub account: Option<Account>,
    /// For replaying dead letters onto the billing queue.
    pub amqp_url: String,
    pub auth: auth::Authenticator,
    pub limiter: auth::RateLimiter,
}

impl ApiState {
    pub fn new(
        config: &ApiConfig,
        pool: PgPool,
        plans: Arc<Plans>,
        account: Option<Account>,
        amqp_url: String,
    ) -> Self {
        Self {
            pool,
            plans,
            account,
            amqp_url,
            auth: auth::Authenticator::new(config),
            limiter: auth::RateLimiter::new(config.rate_limit_per_minute),
        }
    }
}

/// Registers routes, and remembers what it registered (the OpenAPI coverage test reads
/// [`registered_routes`], made by the same function that builds the app).
pub struct Routes<'a> {
    config: Option<&'a mut web::ServiceConfig>,
    registered: Vec<(Method, &'static str)>,
}

impl Routes<'_> {
    fn add(&mut self, method: Method, path: &'static str, route: Route) {
        self.registered.push((method.clone(), path));
        if let Some(config) = self.config.as_deref_mut() {
            config.route(path, route.method(method));
        }
    }
}

fn routes(r: &mut Routes<'_>) {
    use Method as M;
    r.add(
        M::POST,
        "/v1/checkout/sessions",
        web::route().to(sessions::checkout),
    );
    r.add(
        M::POST,
        "/v1/portal/sessions",
        web::route().to(sessions::portal),
    );
    r.add(
        M::GET,
        "/v1/billing/status",
        web::route().to(status::status),
    );
    r.add(
        M::GET,
        "/v1/billing/transactions",
        web::route().to(reads::transactions),
    );
    r.add(
        M::GET,
        "/v1/billing/invoices",
        web::route().to(reads::invoices),
    );
    r.add(
        M::GET,
        "/v1/billing/payment-methods",
        web::route().to(reads::payment_methods),
    );
    r.add(
        M::GET,
        "/v1/verify-payment/{email}",
        web::route().to(status::verify_payment),
    );
    r.add(M::GET, "/v1/user-auth", web::route().to(status::user_auth));
    r.add(
        M::GET,
        "/v1/openapi.json",
        web::route().to(openapi::document),
    );
    r.add(
        M::GET,
        "/v1/admin/dead-letters",
        web::route().to(admin::dead_letters),
    );
    r.add(
        M::POST,
        "/v1/admin/dead-letters/{id}/replay",
        web::route().to(admin::replay),
    );
    r.add(
        M::POST,
        "/v1/admin/credits/adjustments",
        web::route().to(admin::adjust_credits),
    );
    r.add(
        M::PUT,
        "/v1/admin/customers/{user_id}/test-user",
        web::route().to(admin::flag_test_user),
    );
    r.add(
        M::DELETE,
        "/v1/admin/customers/{user_id}/test-user",
        web::route().to(admin::unflag_test_user),
    );
    r.add(
        M::GET,
        "/v1/admin/customers/{user_id}/transactions",
        web::route().to(admin::transactions),
    );
}

/// Every (method, path template) the app serves.
pub fn registered_routes() -> Vec<(String, String)> {
    let mut r = Routes {
        config: None,
        registered: Vec::new(),
    };
    routes(&mut r);
    r.registered
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect()
}

fn cors(origins: &[String]) -> Cors {
    let mut cors = Cors::default()
        .allowed_methods(["GET", "POST", "PUT", "DELETE"])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::HeaderName::from_static("idempotency-key"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(600);
    if origins.iter().any(|o| o == "*") {
        cors = cors.allow_any_origin();
    } else {
        for origin in origins {
            cors = cors.allowed_origin(origin);
        }
    }
    cors
}

/// Headers on every response: the API is JSON for scripts, never a page to frame,
/// sniff or cache.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::X_FRAME_OPTIONS, "DENY"))
        .add((header::CACHE_CONTROL, "no-store"))
        .add((header::REFERRER_POLICY, "no-referrer"))
        .add((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ))
        .add((header::STRICT_TRANSPORT_SECURITY, "max-age=63072000"))
        .add(("cross-origin-opener-policy", "same-origin"))
}

/// One span per request (method, route, caller kind, status), and a request counter.
async fn traced(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_string());
    let span = tracing::info_span!(
        "api request",
        method = %req.method(),
        route = %route,
        caller = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.call(req).instrument(span.clone()).await?;
    let status = response.status().as_u16();
    span.record("status", status);
    metrics::counter!("tollgate_billing_api_requests_total",
                      "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("tollgate_billing_api_request_duration_seconds", "route" => route.clone())
        .record(started.elapsed());
    span.in_scope(|| {
        tracing::debug!(
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "answered"
        )
    });
    Ok(response)
}

async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound(
        "no such endpoint (see GET /v1/openapi.json)".into(),
    ))
}

/// Binds `listener` and serves the API.
pub fn serve(
    listener: TcpListener,
    state: ApiState,
    config: &ApiConfig,
) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let origins = config.cors_origins.clone();
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::invalid(format!("path: {e}")).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::invalid(format!("query: {e}")).into()),
            )
            .configure(|config| {
                routes(&mut Routes {
                    config: Some(config),
                    registered: Vec::new(),
                })
            })
            // The billing page, outside /v1 and its OpenAPI document.
            .configure(page::configure)
            .default_service(web::to(not_found))
            .wrap(from_fn(traced))
            .wrap(cors(&origins))
            .wrap(security_headers())
    })
    .workers(2)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}
