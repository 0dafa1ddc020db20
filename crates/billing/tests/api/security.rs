//! Authentication on every endpoint, rate limits, CORS and security headers.

use serde_json::json;
use tollgate_test_support::unix_now;

use crate::helpers::*;

const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/v1/checkout/sessions"),
    ("POST", "/v1/portal/sessions"),
    ("GET", "/v1/billing/status"),
    ("GET", "/v1/billing/transactions"),
    ("GET", "/v1/billing/invoices"),
    ("GET", "/v1/billing/payment-methods"),
    ("GET", "/v1/verify-payment/a@b.test"),
    ("GET", "/v1/user-auth"),
    ("GET", "/v1/admin/dead-letters"),
    ("POST", "/v1/admin/dead-letters/1/replay"),
    ("POST", "/v1/admin/credits/adjustments"),
    ("PUT", "/v1/admin/customers/u1/test-user"),
    ("DELETE", "/v1/admin/customers/u1/test-user"),
    ("GET", "/v1/admin/customers/u1/transactions"),
];

#[tokio::test]
async fn every_endpoint_needs_a_valid_token() {
    let api = spawn_api(Options::default()).await;
    let expired = jwt_hs256(json!({"sub": "user_ana", "exp": unix_now() - 3600}));
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "user_ana", "exp": unix_now() + 300}),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-of-32-bytes-or-more"),
    )
    .unwrap();
    for (method, path) in PROTECTED {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let none = api
            .send(
                api.http
                    .request(method.clone(), api.url(path))
                    .json(&json!({})),
            )
            .await;
        assert_eq!(
            (none.status, none.code()),
            (401, "unauthenticated"),
            "{method} {path}"
        );
        assert_eq!(
            none.header("www-authenticate"),
            Some("Bearer realm=\"tollgate\"")
        );
        for token in [
            "not-a-token",
            &expired,
            &other_secret,
            "service-token-for-api-test",
        ] {
            let bad = api
                .send(
                    api.http
                        .request(method.clone(), api.url(path))
                        .bearer_auth(token)
                        .json(&json!({})),
                )
                .await;
            assert_eq!(
                (bad.status, bad.code()),
                (401, "invalid_token"),
                "{method} {path}"
            );
        }
    }
    let basic = api
        .send(
            api.http
                .get(api.url("/v1/billing/status"))
                .basic_auth("user", Some("pass")),
        )
        .await;
    assert_eq!(basic.status, 401);
}

#[tokio::test]
async fn callers_past_their_rate_get_429_with_retry_after_and_others_do_not() {
    let api = spawn_api(Options {
        rate_limit: 3,
        ..Options::default()
    })
    .await;
    let ana = user_token("user_ana", None);
    for _ in 0..3 {
        assert_eq!(api.get("/v1/billing/status", &ana).await.status, 200);
    }
    let limited = api.get("/v1/billing/status", &ana).await;
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    let retry_after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    // Another caller has a bucket of their own.
    let bo = user_token("user_bo", None);
    assert_eq!(api.get("/v1/billing/status", &bo).await.status, 200);
    // Failed authentication spends the client address's bucket.
    for _ in 0..3 {
        assert_eq!(
            api.get("/v1/billing/status", "wrong-token").await.status,
            401
        );
    }
    assert_eq!(
        api.get("/v1/billing/status", "wrong-token").await.status,
        429
    );
}

#[tokio::test]
async fn cors_allows_the_configured_origin_only() {
    let api = spawn_api(Options::default()).await;
    let preflight = |origin: &str| {
        api.http
            .request(reqwest::Method::OPTIONS, api.url("/v1/checkout/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
    };
    let allowed = api.send(preflight(ORIGIN)).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some(ORIGIN));
    let methods = allowed.header("access-control-allow-methods").unwrap();
    assert!(methods.contains("POST"), "{methods}");
    let headers = allowed
        .header("access-control-allow-headers")
        .unwrap()
        .to_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    let other = api.send(preflight("https://evil.example")).await;
    assert!(other.status >= 400, "{}", other.status);
    assert_eq!(other.header("access-control-allow-origin"), None);

    // An actual request from the allowed origin carries the header too.
    let get = api
        .send(
            api.http
                .get(api.url("/v1/billing/status"))
                .header("origin", ORIGIN)
                .bearer_auth(user_token("user_ana", None)),
        )
        .await;
    assert_eq!(get.status, 200);
    assert_eq!(get.header("access-control-allow-origin"), Some(ORIGIN));
}

#[tokio::test]
async fn every_answer_carries_security_headers_and_errors_are_json() {
    let api = spawn_api(Options::default()).await;
    let ok = api
        .get("/v1/billing/status", &user_token("user_ana", None))
        .await;
    let unauthenticated = api.send(api.http.get(api.url("/v1/billing/status"))).await;
    let missing = api.get("/v1/nothing-here", SERVICE_TOKEN).await;
    let wrong_method = api
        .send(api.http.patch(api.url("/v1/billing/status")))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    assert_eq!(wrong_method.status, 404);
    for answer in [&ok, &unauthenticated, &missing, &wrong_method] {
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("x-frame-options"), Some("DENY"));
        assert_eq!(answer.header("cache-control"), Some("no-store"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(
            answer.header("strict-transport-security"),
            Some("max-age=63072000")
        );
        assert_eq!(
            answer.header("cross-origin-opener-policy"),
            Some("same-origin")
        );
        assert!(
            answer
                .header("content-security-policy")
                .is_some_and(|v| v.contains("frame-ancestors 'none'"))
        );
        assert!(
            answer
                .header("content-type")
                .is_some_and(|v| v.starts_with("application/json"))
        );
    }
}
