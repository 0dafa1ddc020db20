use std::time::Duration;

use tollgate_test_support::{fresh_event, signed_headers};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_unreachable_answers_503_and_a_retry_after_recovery_is_delivered() {
    let app = spawn_app_with(Options {
        via_proxy: true,
        confirm_timeout_ms: 2000,
        ..Options::default()
    })
    .await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    let proxy = app.proxy.as_ref().unwrap();

    proxy.cut();
    let (id, body) = fresh_event(INVOICE_PAID, false);
    let response = app.post_signed(&body).await;
    assert_eq!(response.status().as_u16(), 503, "Stripe must retry");
    assert_eq!(response.headers().get("retry-after").unwrap(), "5");
    wait_for_status(&app, "/readyz", 503).await;
    // Still refused while down, and readiness says why.
    assert_eq!(app.post_signed(&body).await.status().as_u16(), 503);

    proxy.restore();
    wait_for_status(&app, "/readyz", 200).await;
    // Stripe's retry: same event, fresh signature.
    let response = app
        .post_webhook(&body, Some(&signed_headers(SECRET, &body)))
        .await;
    assert_eq!(response.status().as_u16(), 200);
    let delivery = next_delivery(&mut tap).await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        id
    );

    // Nothing else arrives: the refused attempts never reached the broker.
    let (sentinel, body) = fresh_event(INVOICE_PAID, false);
    assert_eq!(app.post_signed(&body).await.status().as_u16(), 200);
    let next = next_delivery(&mut tap).await;
    assert_eq!(
        next.properties.message_id().as_ref().unwrap().as_str(),
        sentinel
    );
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_starts_without_a_broker_and_becomes_ready_when_it_appears() {
    use tollgate_ingest::{Application, Config};
    use tollgate_runtime::Env;
    use tollgate_test_support::{TcpProxy, TestVhost};

    let vhost = TestVhost::create();
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    proxy.cut();
    let url = vhost.amqp_url_via(&proxy.addr());
    let env = Env::from_pairs([
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("AMQP_URL", url.as_str()),
        ("STRIPE_WEBHOOK_SECRET", SECRET),
        ("INGEST_WORKERS", "1"),
    ]);
    let app = Application::build(Config::from_env(&env).unwrap()).unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    let publisher = app.publisher().clone();
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    let (_, body) = fresh_event(INVOICE_PAID, false);
    let response = client
        .post(format!("{base}/webhook"))
        .header("Stripe-Signature", signed_headers(SECRET, &body))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);

    proxy.restore();
    assert!(publisher.wait_ready(Duration::from_secs(15)).await);
    assert_eq!(
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
