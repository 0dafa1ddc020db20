//! What reaches the webhook at all: credentials, bodies, probes and metrics.

use std::time::Duration;

use base64::Engine;
use serde_json::json;

use crate::helpers::*;

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_the_configured_credentials_is_401() {
    let mut entitlements = Entitlements::start().await;
    entitlements
        .customer("u_auth", "auth@example.com", "active", "pro")
        .await;
    let app = Fulfillment::start(Options::new(entitlements.url(), None)).await;
    let body = cx_request("billing.credits", json!({ "user_id": "u_auth" })).to_string();
    let wrong_basic = basic(BASIC_USER, "test-basic-password-43");
    let wrong_user = basic("someone", BASIC_PASSWORD);
    let bearer = format!("Bearer {HEADER_TOKEN}");
    let refused: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no credentials", vec![]),
        (
            "wrong basic password",
            vec![("authorization", wrong_basic.as_str())],
        ),
        (
            "wrong basic user",
            vec![("authorization", wrong_user.as_str())],
        ),
        ("a bearer token", vec![("authorization", bearer.as_str())]),
        ("garbage basic", vec![("authorization", "Basic %%%")]),
        (
            "wrong header token",
            vec![(HEADER_NAME, "test-header-token-0123456780")],
        ),
        (
            "the token in another header",
            vec![("x-api-key", HEADER_TOKEN)],
        ),
    ];
    for (case, headers) in refused {
        let (status, answer) = app.post_raw(body.as_bytes(), &headers).await;
        assert_eq!(status, 401, "{case}: {answer}");
        assert_eq!(answer["error"]["code"], "unauthorized", "{case}");
    }
    // Refused before the body is even parsed.
    let (status, _) = app.post_raw(b"{not json", &[]).await;
    assert_eq!(status, 401);
    let response = app
        .client
        .post(format!("{}/webhook", app.address))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"tollgate-fulfillment\""
    );

    // Either configured method is let in.
    for headers in [
        vec![("authorization", Fulfillment::basic_auth())],
        vec![(HEADER_NAME, HEADER_TOKEN.to_string())],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, answer) = app.post_raw(body.as_bytes(), &headers).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(cx_text(&answer), "You have 0 credits.");
    }
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains(r#"tollgate_fulfillment_requests_total{flavor="none",intent="none",outcome="unauthorized"}"#),
        "{metrics}"
    );
    app.stop().await;
    entitlements.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_dialogflow_requests_are_400() {
    // No upstream is reached for any of these: a hung one proves it.
    let (silent, _listener) = silent_listener().await;
    let app = Fulfillment::start(Options::new(silent, None)).await;
    let auth = Fulfillment::basic_auth();
    let headers = [("authorization", auth.as_str())];
    for (body, code) in [
        (&b"{\"queryResult\": {"[..], "invalid_json"),
        (b"", "invalid_json"),
        (b"not json at all", "invalid_json"),
        (b"{\"hello\": \"world\"}", "unrecognized_request"),
        (b"[{\"queryResult\": {}}]", "unrecognized_request"),
        (
            b"{\"queryResult\": [\"billing.status\"]}",
            "invalid_request",
        ),
        (b"{\"fulfillmentInfo\": {\"tag\": 42}}", "invalid_request"),
        (
            b"{\"sessionInfo\": {\"parameters\": \"user_id=u_1\"}}",
            "invalid_request",
        ),
    ] {
        let (status, answer) = app.post_raw(body, &headers).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(
            answer["error"]["code"],
            code,
            "{}",
            String::from_utf8_lossy(body)
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }
    let (status, answer) = app.post_raw(b"{\"hello\": 1}", &headers).await;
    assert_eq!(status, 400);
    assert_eq!(
        answer["error"]["message"],
        "Expected a Dialogflow ES (queryResult) or CX (fulfillmentInfo, sessionInfo) webhook request."
    );
    let too_big = vec![b' '; 300 * 1024];
    let (status, answer) = app.post_raw(&too_big, &headers).await;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (413, &json!("payload_too_large"))
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics() {
    let mut entitlements = Entitlements::start().await;
    entitlements
        .customer("u_probe", "probe@example.com", "none", "free")
        .await;
    let app = Fulfillment::start(Options::new(entitlements.url(), None)).await;
    assert_eq!(
        app.get("/healthz").await,
        (200, r#"{"status":"ok"}"#.to_string())
    );
    // Entitlements reports SERVING once its feed is fresh (checked every 250 ms).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = app.get("/readyz").await;
        if status == 200 {
            assert_eq!(body, r#"{"status":"ready"}"#);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = app
        .ask(&es_request(
            "billing.status",
            Some(json!({ "userId": "u_probe" })),
            json!({}),
        ))
        .await;
    assert_eq!(
        es_text(&answer),
        "You don't have a subscription, so you're on the Free plan. Ask me how to upgrade if you'd like more."
    );
    let (status, metrics) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for series in [
        r#"tollgate_fulfillment_requests_total{flavor="es",intent="billing.status",outcome="answered"}"#,
        r#"tollgate_fulfillment_request_duration_seconds_bucket{outcome="answered""#,
        r#"tollgate_fulfillment_upstream_calls_total{upstream="entitlements",call="GetEntitlements",outcome="ok"}"#,
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    app.stop().await;
    entitlements.stop().await;
}
