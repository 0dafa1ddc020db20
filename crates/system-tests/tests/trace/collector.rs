//! A real OTLP/gRPC trace receiver (the services export with opentelemetry-otlp's
//! `grpc-tonic` exporter): it accepts every export and records each span with the
//! `service.name` of the process that sent it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::AnyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One exported span, ids in lowercase hex (an empty parent: a root span).
#[derive(Clone, Debug)]
pub struct Recorded {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: HashMap<String, String>,
    /// (trace id, span id) of each linked span.
    pub links: Vec<(String, String)>,
}

impl Recorded {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<Recorded>>,
    arrived: Notify,
}

struct Receiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut recorded = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                recorded.push(Recorded {
                    service: service.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex::encode(&l.trace_id), hex::encode(&l.span_id)))
                        .collect(),
                });
            }
        }
        self.0.spans.lock().extend(recorded);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// An attribute value as text (the tests compare strings and numbers alike).
fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(n)) => n.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub struct Collector {
    /// What a service's `OTEL_EXPORTER_OTLP_ENDPOINT` should be.
    pub endpoint: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    /// Listens on a random loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let service = TraceServiceServer::new(Receiver(shared.clone()));
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("the OTLP receiver serves");
        });
        Self {
            endpoint,
            shared,
            server,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Recorded> {
        self.shared.spans.lock().clone()
    }

    /// Waits until `check` finds what it looks for in the spans received so far
    /// (re-checked on every export); panics after `timeout` with what did arrive.
    pub async fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[Recorded]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before checking, so an export in between still wakes us.
            let arrived = self.shared.arrived.notified();
            if let Some(found) = check(&self.spans()) {
                return found;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let spans = self.spans();
                let received: Vec<String> = spans
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {} trace={} span={} parent={}",
                            s.service, s.name, s.trace_id, s.span_id, s.parent_span_id
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; {} spans received:\n{}",
                    received.len(),
                    received.join("\n")
                );
            }
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}
