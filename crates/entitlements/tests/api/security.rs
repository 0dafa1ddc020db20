//! Authentication on every RPC, users limited to themselves; health, reflection,
//! gRPC-Web with CORS, metrics.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tollgate_proto::entitlements::v1 as pb;
use tonic::{Code, Request};

use crate::helpers::*;

fn jwt_hs256(sub: &str, email: Option<&str>, secret: &str) -> String {
    let claims =
        json!({ "sub": sub, "email": email, "exp": tollgate_test_support::unix_now() + 300 });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn check_request(subject: &str) -> pb::CheckRequest {
    pb::CheckRequest {
        subject: subject.into(),
        feature: "docs.read".into(),
        at_least_version: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_authenticated_and_users_only_ask_about_themselves() {
    let jwks = tollgate_test_support::serve_test_jwks().await;
    let mut app = spawn_app(Options {
        extra_env: vec![("ENTITLEMENTS_JWKS_URL", jwks)],
        ..Options::default()
    })
    .await;
    app.seed(Seed {
        user_id: "alice",
        email: "alice@example.com",
        status: "active",
        tier: "pro",
        features: &[],
    })
    .await;
    let mut client = app.client.clone();

    let none = client
        .check(Request::new(check_request("alice")))
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let bad = client
        .check(authed(check_request("alice"), "not-a-valid-token"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::Unauthenticated);
    let forged = jwt_hs256("alice", None, "some-other-secret-of-at-least-32-bytes");
    assert_eq!(
        client
            .check(authed(check_request("alice"), &forged))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    let unauthenticated_watch = client
        .watch(Request::new(pb::WatchRequest {
            subject: String::new(),
            from_version: 0,
        }))
        .await
        .unwrap_err();
    assert_eq!(unauthenticated_watch.code(), Code::Unauthenticated);

    // A user's own token: their subject (by id or verified email) only, and only reads.
    let alice = jwt_hs256("alice", Some("Alice@Example.com"), HS256_SECRET);
    assert!(
        client
            .check(authed(check_request("alice"), &alice))
            .await
            .unwrap()
            .into_inner()
            .allowed
    );
    assert!(
        client
            .check(authed(check_request("alice@example.com"), &alice))
            .await
            .is_ok()
    );
    let other = client
        .check(authed(check_request("bob"), &alice))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let other_batch = client
        .check_batch(authed(
            pb::CheckBatchRequest {
                subject: "bob".into(),
                features: vec!["docs.read".into()],
                at_least_version: 0,
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(other_batch.code(), Code::PermissionDenied);
    let spend = client
        .consume_credits(authed(
            pb::ConsumeCreditsRequest {
                subject: "alice".into(),
                amount: 1,
                idempotency_key: "k".into(),
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(spend.code(), Code::PermissionDenied);
    let watch_all = client
        .watch(authed(
            pb::WatchRequest {
                subject: String::new(),
                from_version: 0,
            },
            &alice,
        ))
        .await
        .unwrap_err();
    assert_eq!(watch_all.code(), Code::PermissionDenied);

    // RS256 through the JWKS URL.
    let key = EncodingKey::from_rsa_pem(&fixture("jwt/rs256-test-key.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    let claims = json!({ "sub": "alice", "exp": tollgate_test_support::unix_now() + 300 });
    let rs256 = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    assert!(
        client
            .check(authed(check_request("alice"), &rs256))
            .await
            .is_ok()
    );
    assert_eq!(
        client
            .check(authed(check_request("bob"), &rs256))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": tollgate_test_support::unix_now() - 3600 }),
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        client
            .check(authed(check_request("alice"), &expired))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );
    app.stop().await;
}

/// A gRPC-Web frame: flag 0, big-endian length, the message.
fn grpc_web_frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_from_a_browser_origin_health_and_metrics() {
    let mut app = spawn_app(Options::default()).await;
    app.seed(Seed {
        user_id: "web",
        email: "web@example.com",
        status: "active",
        tier: "pro",
        features: &[],
    })
    .await;
    let http = reqwest::Client::new();
    let url = format!(
        "http://{}/tollgate.entitlements.v1.Entitlements/Check",
        app.addr
    );

    // CORS preflight from the configured origin.
    let preflight = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://app.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type,x-grpc-web",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{:?}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );

    let request = pb::CheckRequest {
        subject: "web".into(),
        feature: "scripts.download".into(),
        at_least_version: 0,
    };
    let response = http
        .post(&url)
        .header("Origin", "https://app.example.com")
        .header("Content-Type", "application/grpc-web+proto")
        .header("X-Grpc-Web", "1")
        .header("Authorization", format!("Bearer {SERVICE_TOKEN}"))
        .body(grpc_web_frame(&request))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let body = response.bytes().await.unwrap();
    assert_eq!(body[0], 0, "a data frame first");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let answer: pb::CheckResponse = prost::Message::decode(&body[5..5 + len]).unwrap();
    assert!(answer.allowed, "{answer:?}");
    let trailers = String::from_utf8_lossy(&body[5 + len..]);
    assert!(
        trailers.contains("grpc-status:0") || trailers.contains("grpc-status: 0"),
        "{trailers}"
    );

    let other_origin = http
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "https://evil.example.net")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(
        other_origin
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Standard health checking.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "tollgate.entitlements.v1.Entitlements"] {
        eventually("SERVING", std::time::Duration::from_secs(5), || {
            let mut health = health.clone();
            async move {
                health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().status()
                            == tonic_health::pb::health_check_response::ServingStatus::Serving
                    })
            }
        })
        .await;
    }

    let metrics = http
        .get(format!("http://{}/metrics", app.metrics_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("tollgate_entitlements_rpc_seconds"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_entitlements_cache_total"),
        "{metrics}"
    );
    app.stop().await;
}
