//! Bad input gets a clear 4xx and publishes nothing. Each test ends by sending a
//! valid sentinel event: the first message on the tap must be that sentinel, which
//! proves nothing before it was published (no sleeping and hoping).

use tollgate_events::SigningSecret;
use tollgate_events::signature::{compute_v1, sign_header};
use tollgate_test_support::{fresh_event, signed_headers, unix_now};

use crate::helpers::*;

async fn assert_nothing_published_before_sentinel(app: &TestApp, tap: &mut lapin::Consumer) {
    let (id, body) = fresh_event(INVOICE_PAID, false);
    assert_eq!(app.post_signed(&body).await.status().as_u16(), 200);
    let delivery = next_delivery(tap).await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        id,
        "a refused request was published"
    );
}

async fn assert_refused(response: reqwest::Response, status: u16, code: &str) {
    assert_eq!(response.status().as_u16(), status);
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_counted() {
    let app = spawn_app().await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    let (_, body) = fresh_event(INVOICE_PAID, false);
    let now = unix_now();
    let secret = SigningSecret::new(SECRET);
    let mut tampered = body.clone();
    tampered[20] ^= 1;

    let cases: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "tampered body",
            tampered,
            Some(sign_header(&secret, now, &body)),
        ),
        (
            "wrong secret",
            body.clone(),
            Some(signed_headers("whsec_wrong", &body)),
        ),
        (
            "stale",
            body.clone(),
            Some(sign_header(&secret, now - 301, &body)),
        ),
        ("missing header", body.clone(), None),
        (
            "garbage header",
            body.clone(),
            Some("complete garbage".into()),
        ),
        (
            "v0 only",
            body.clone(),
            Some(format!("t={now},v0={}", compute_v1(&secret, now, &body))),
        ),
    ];
    for (name, body, signature) in cases {
        let response = app.post_webhook(&body, signature.as_deref()).await;
        assert_eq!(response.status().as_u16(), 400, "{name}");
        let text = response.text().await.unwrap();
        assert!(text.contains("invalid_signature"), "{name}: {text}");
        assert!(
            !text.contains(SECRET),
            "the secret never leaves the service"
        );
    }

    // Exactly at the tolerance is still accepted (the sentinel below is fresh).
    let (_, edge) = fresh_event(INVOICE_PAID, false);
    let at_tolerance = sign_header(&secret, unix_now() - 299, &edge);
    assert_eq!(
        app.post_webhook(&edge, Some(&at_tolerance))
            .await
            .status()
            .as_u16(),
        200
    );
    next_delivery(&mut tap).await;

    let metrics = app.get("/metrics").await.text().await.unwrap();
    for reason in [
        "mismatch",
        "timestamp_too_old",
        "missing_header",
        "malformed_header",
        "no_v1_signature",
    ] {
        assert!(
            metrics.contains(&format!(
                "tollgate_ingest_signature_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason} counted: {metrics}"
        );
    }
    assert_nothing_published_before_sentinel(&app, &mut tap).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_refused() {
    let app = spawn_app().await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;

    // One byte over 1 MiB, properly signed: 413 before anything else.
    let mut oversize =
        br#"{"id":"evt_big","type":"invoice.paid","created":1,"livemode":false,"pad":""#.to_vec();
    oversize.resize(1024 * 1024 - 2, b'a');
    oversize.extend_from_slice(b"\"}");
    assert_eq!(oversize.len(), 1024 * 1024);
    let response = app.post_signed(&oversize).await;
    assert_eq!(response.status().as_u16(), 200, "exactly 1 MiB is allowed");
    next_delivery(&mut tap).await;
    oversize.insert(oversize.len() - 2, b'a');
    assert_refused(app.post_signed(&oversize).await, 413, "payload_too_large").await;

    assert_refused(
        app.post_signed(b"this is not json").await,
        400,
        "invalid_event",
    )
    .await;
    assert_refused(
        app.post_signed(b"{\"id\":\"evt_1\",").await,
        400,
        "invalid_event",
    )
    .await;
    let missing_id = br#"{"object":"event","type":"invoice.paid","created":1700000000,"livemode":false,"data":{}}"#;
    assert_refused(app.post_signed(missing_id).await, 400, "invalid_event").await;
    let missing_type = br#"{"id":"evt_x","created":1700000000,"livemode":false,"data":{}}"#;
    assert_refused(app.post_signed(missing_type).await, 400, "invalid_event").await;

    let (_, live) = fresh_event(INVOICE_PAID, true);
    assert_refused(app.post_signed(&live).await, 400, "livemode_mismatch").await;

    assert_nothing_published_before_sentinel(&app, &mut tap).await;
}
