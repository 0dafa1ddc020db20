//! With OTEL_EXPORTER_OTLP_ENDPOINT set, the real ingest binary exports its
//! request span over OTLP/gRPC, and the `traceparent` on the AMQP message names
//! that same trace, so billing's work can join it.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tokio::sync::mpsc;
use tokio_stream_shim::TcpIncoming;
use tollgate_test_support::{fresh_event, signed_headers};

use crate::helpers::{INVOICE_PAID, next_delivery};

/// A minimal OTLP trace collector: forwards every export request to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

mod tokio_stream_shim {
    //! Accepted connections as the stream tonic's server wants.
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::net::{TcpListener, TcpStream};

    pub struct TcpIncoming(pub TcpListener);

    impl futures_util::Stream for TcpIncoming {
        type Item = std::io::Result<TcpStream>;
        fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0
                .poll_accept(cx)
                .map(|r| Some(r.map(|(stream, _)| stream)))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_span_is_exported_and_its_trace_travels_with_the_message() {
    let (spans_tx, mut spans_rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans_tx)))
            .serve_with_incoming(TcpIncoming(listener)),
    );

    let mut app = crate::helpers::TestAppBinary::spawn(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_string()),
        ("RUST_LOG", "info".to_string()),
    ])
    .await;
    let broker = app.broker().await;
    let (_channel, mut tap) = crate::helpers::tap(&broker).await;

    let (id, body) = fresh_event(INVOICE_PAID, false);
    let response = app
        .post(&body, &signed_headers(crate::helpers::SECRET, &body))
        .await;
    assert_eq!(response.status(), 200);
    let delivery = next_delivery(&mut tap).await;
    let traceparent = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("traceparent").cloned())
    {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("traceparent header: {other:?}"),
    };
    let trace_id = traceparent.split('-').nth(1).unwrap().to_string();

    // SIGTERM flushes the batch exporter; spans may also arrive earlier.
    app.terminate().await;
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(request) = spans_rx.recv().await {
            for span in request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                let event_id = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "event_id")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    });
                if span.name == "webhook" && event_id.as_deref() == Some(id.as_str()) {
                    return Some((hex::encode(&span.trace_id), request.resource_spans.clone()));
                }
            }
        }
        None
    })
    .await
    .expect("the webhook span is exported within 20 s")
    .expect("collector still running");
    assert_eq!(
        found.0, trace_id,
        "the AMQP traceparent names the exported trace"
    );
    let service_name = found.1[0]
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(service_name.as_deref(), Some("ingest"));
}
