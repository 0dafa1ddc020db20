//! Logs, traces and metrics, set up once per process.
//!
//! - Logs: JSON lines by default (production); `LOG_FORMAT=text` for people,
//!   coloured only on a terminal (and never with `NO_COLOR` set).
//!   Filter from `RUST_LOG`, defaulting to info for our crates and warn for
//!   dependencies.
//! - Traces: spans always carry W3C trace ids; `crate::propagation` carries them
//!   across processes as `traceparent` (an AMQP header from ingest to billing and
//!   from billing's outbox relay to entitlements; a column of the outbox in
//!   between), so one webhook is one trace. They are exported over OTLP/gRPC
//!   (batched; `OTEL_BSP_SCHEDULE_DELAY`, default 5 s) only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - Metrics: a Prometheus recorder; each service serves `render()` on `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_FILTER: &str = "warn,tollgate=info,tollgate_ingest=info,ingest=info,billing=info,entitlements=info,fulfillment=info";

/// Latency buckets (seconds) for every histogram: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("LOG_FORMAT must be `json` or `text`, got `{0}`")]
    LogFormat(String),
    #[error("RUST_LOG is invalid: {0}")]
    Filter(String),
    #[error("the OTLP exporter could not be built: {0}")]
    Otlp(String),
    #[error("the tracing subscriber was already installed")]
    AlreadyInstalled,
}

/// Keeps the trace pipeline alive; flushes pending spans when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Installs logging and tracing for `service`. Call once, early in `main`.
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    let format = std::env::var("LOG_FORMAT").unwrap_or_else(|_| "json".into());
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(directives).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        _ => EnvFilter::new(DEFAULT_FILTER),
    };

    let provider = tracer_provider(service)?;
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let installed = match format.as_str() {
        "json" => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        "text" | "pretty" => registry
            .with(tracing_subscriber::fmt::layer().with_ansi(colour_wanted()))
            .try_init(),
        other => return Err(TelemetryError::LogFormat(other.to_string())),
    };
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    metrics_handle();
    Ok(Telemetry { provider })
}

/// Colour codes only for a person at a terminal: in a file, a pipe or a container's
/// log (`make run > stack.log`, `kubectl logs`) they are noise; `NO_COLOR` turns
/// them off anywhere (no-color.org).
fn colour_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn tracer_provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    let service_name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_string());
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service_name).build());
    let export = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_ok_and(|v| !v.is_empty());
    let builder = if export {
        // The exporter reads the endpoint, headers and timeout from the standard OTEL_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        builder.with_batch_exporter(exporter)
    } else {
        builder
    };
    Ok(builder.build())
}

/// The process-wide Prometheus recorder, installed on first use (tests share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(LATENCY_BUCKETS)
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}
