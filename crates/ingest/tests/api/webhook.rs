use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use tollgate_events::topology::{BILLING_QUEUE, EVENTS_EXCHANGE};
use tollgate_test_support::{fresh_event, signed_headers, stripe_fixture};

use crate::helpers::*;

fn header<'a>(delivery: &'a lapin::message::Delivery, name: &str) -> &'a AMQPValue {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
        .unwrap_or_else(|| panic!("header {name} present"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_stripe_event_arrives_on_the_exchange_with_its_properties() {
    let app = spawn_app().await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;

    // A real payload exactly as Stripe sent it (pretty-printed, original id).
    let body = stripe_fixture(INVOICE_PAID);
    let response = app.post_signed(&body).await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["received"],
        true
    );

    let delivery = next_delivery(&mut tap).await;
    assert_eq!(delivery.data, body, "the raw bytes are published unchanged");
    assert_eq!(delivery.exchange.as_str(), EVENTS_EXCHANGE);
    assert_eq!(delivery.routing_key.as_str(), "invoice.paid");
    let p = &delivery.properties;
    assert_eq!(
        p.message_id().as_ref().unwrap().as_str(),
        "evt_1KJrGtJDPojXS6LN15fcthM3"
    );
    assert_eq!(p.kind().as_ref().unwrap().as_str(), "invoice.paid");
    assert_eq!(p.delivery_mode(), &Some(2), "persistent");
    assert_eq!(
        p.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    let timestamp = p.timestamp().expect("timestamp set");
    assert!(timestamp.abs_diff(tollgate_test_support::unix_now() as u64) < 60);
    assert_eq!(
        header(&delivery, "api_version"),
        &AMQPValue::LongString("2020-03-02".into())
    );
    assert_eq!(header(&delivery, "livemode"), &AMQPValue::Boolean(false));
    assert_eq!(
        header(&delivery, "created"),
        &AMQPValue::LongLongInt(1642649111)
    );
    let AMQPValue::LongString(traceparent) = header(&delivery, "traceparent") else {
        panic!("traceparent is a string");
    };
    let traceparent = traceparent.to_string();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3].len()),
        ("00", 32, 16, 2)
    );
    assert!(parts[1].bytes().all(|b| b.is_ascii_hexdigit()) && parts[1] != "0".repeat(32));

    // The shared topology is in place: billing's durable queue holds the event too.
    let channel = broker.create_channel().await.unwrap();
    let billing = channel
        .queue_declare(
            BILLING_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("billing queue declared by ingest");
    assert_eq!(billing.message_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alias_path_and_every_fixture_are_accepted() {
    let app = spawn_app().await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    let fixtures =
        std::fs::read_dir(tollgate_test_support::fixtures::fixtures_dir().join("complete"))
            .unwrap()
            .map(|e| format!("complete/{}", e.unwrap().file_name().to_string_lossy()))
            .collect::<Vec<_>>();
    assert!(fixtures.len() >= 10);
    for fixture in &fixtures {
        let (id, body) = fresh_event(fixture, false);
        let response = app
            .post_to(
                "/webhooks/stripe",
                &body,
                Some(&signed_headers(SECRET, &body)),
            )
            .await;
        assert_eq!(response.status().as_u16(), 200, "{fixture}");
        let delivery = next_delivery(&mut tap).await;
        assert_eq!(
            delivery.properties.message_id().as_ref().unwrap().as_str(),
            id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_secret_is_accepted_while_rotating() {
    let app = spawn_app_with(Options {
        secrets: "whsec_old_one, whsec_new_one".into(),
        ..Options::default()
    })
    .await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    for secret in ["whsec_old_one", "whsec_new_one"] {
        let (id, body) = fresh_event(INVOICE_PAID, false);
        let response = app
            .post_webhook(&body, Some(&signed_headers(secret, &body)))
            .await;
        assert_eq!(response.status().as_u16(), 200);
        let delivery = next_delivery(&mut tap).await;
        assert_eq!(
            delivery.properties.message_id().as_ref().unwrap().as_str(),
            id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_endpoint_takes_live_events() {
    let app = spawn_app_with(Options {
        livemode: true,
        ..Options::default()
    })
    .await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    let body =
        stripe_fixture("complete/checkout.session.completed.payment_mode.stripe-sync-engine.json");
    assert_eq!(app.post_signed(&body).await.status().as_u16(), 200);
    let delivery = next_delivery(&mut tap).await;
    assert_eq!(delivery.routing_key.as_str(), "checkout.session.completed");
    assert_eq!(header(&delivery, "livemode"), &AMQPValue::Boolean(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status().as_u16(), 200);
    assert_eq!(app.get("/readyz").await.status().as_u16(), 200);

    let (_, body) = fresh_event(INVOICE_PAID, false);
    assert_eq!(app.post_signed(&body).await.status().as_u16(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("tollgate_ingest_webhooks_total{outcome=\"accepted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_broker_publish_confirm_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_in_flight_webhook_finish_and_then_refuses_new_ones() {
    let app = spawn_app().await;
    let broker = app.broker().await;
    let (_channel, mut tap) = app.tap(&broker).await;
    let (id, body) = fresh_event(INVOICE_PAID, false);
    let in_flight = {
        let client = app.client.clone();
        let url = format!("{}/webhook", app.address);
        let signature = signed_headers(SECRET, &body);
        let body = body.clone();
        tokio::spawn(async move {
            client
                .post(url)
                .header("Stripe-Signature", signature)
                .body(body)
                .send()
                .await
        })
    };
    let delivery = next_delivery(&mut tap).await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        id
    );
    app.handle.stop(true).await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        reqwest::Client::new()
            .get(format!("{}/healthz", app.address))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}
