//! What one caller can send: request messages up to a size, streams per connection up
//! to a number; and the metrics are served only on their own port, never on the gRPC one
//! that browsers and the ingress reach.

use prost::Message;
use tollgate_entitlements::startup::{MAX_REQUEST_BYTES, MAX_STREAMS_PER_CONNECTION};
use tollgate_proto::entitlements::v1 as pb;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_and_the_connection_stays_usable() {
    let mut app = spawn_app(Options::default()).await;
    app.seed(Seed {
        user_id: "sizes",
        email: "sizes@example.com",
        status: "active",
        tier: "pro",
        features: &[],
    })
    .await;
    let mut client = app.client.clone();

    // The largest request the service accepts at all: 100 features of 200 bytes.
    let largest = pb::CheckBatchRequest {
        subject: "sizes".into(),
        features: (0..100).map(|i| format!("{i:0>200}")).collect(),
        at_least_version: 0,
    };
    assert!(largest.encoded_len() < MAX_REQUEST_BYTES);
    let answer = client
        .check_batch(service(largest))
        .await
        .expect("the largest valid batch is answered")
        .into_inner();
    assert_eq!(answer.decisions.len(), 100);

    // One past the limit is refused by the codec, before the service sees it.
    // Tag and length of each field: 2 bytes for the subject, 4 for the feature.
    let feature_bytes = MAX_REQUEST_BYTES + 1 - "sizes".len() - 6;
    let oversized = pb::CheckRequest {
        subject: "sizes".into(),
        feature: "f".repeat(feature_bytes),
        at_least_version: 0,
    };
    assert_eq!(oversized.encoded_len(), MAX_REQUEST_BYTES + 1);
    let refused = client.check(service(oversized)).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");
    // Even unauthenticated: the size is checked first, so a stranger cannot make the
    // server buffer megabytes either.
    let stranger = pb::CheckRequest {
        subject: "sizes".into(),
        feature: "f".repeat(4 * MAX_REQUEST_BYTES),
        at_least_version: 0,
    };
    let refused = client
        .check(tonic::Request::new(stranger))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");

    let after = client
        .check(service(pb::CheckRequest {
            subject: "sizes".into(),
            feature: "docs.read".into(),
            at_least_version: 0,
        }))
        .await
        .expect("the same connection still answers")
        .into_inner();
    assert!(after.allowed);
    app.stop().await;
}

/// The grpc-web framing of one message: flag byte, length, message.
fn frame(message: &impl Message) -> bytes::Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_told_its_stream_limit_and_metrics_stay_off_the_grpc_port() {
    let mut app = spawn_app(Options::default()).await;

    // A raw HTTP/2 client: what the server advertises in its SETTINGS is what any client
    // (a browser's proxy, a misbehaving service) is held to.
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut h2 = h2.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = h2.send_request(request, false).unwrap();
    body.send_data(
        frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
        true,
    )
    .unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // The server's SETTINGS came before its first answer.
    assert_eq!(
        h2.current_max_send_streams(),
        MAX_STREAMS_PER_CONNECTION as usize
    );

    // A plain `GET /metrics` on the gRPC port is no gRPC(-Web) call: refused, empty.
    let http = reqwest::Client::new();
    let on_grpc = http
        .get(format!("http://{}/metrics", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(on_grpc.status(), 400);
    let text = on_grpc.text().await.unwrap();
    assert!(text.is_empty(), "{text}");
    let on_metrics = http
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(on_metrics.status(), 200);
    app.stop().await;
}
