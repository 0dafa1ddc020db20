use std::time::Duration;

use tollgate_events::topology::BILLING_QUEUE;
use tollgate_test_support::fresh_event;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_event_is_stored_once_even_when_delivered_twice() {
    let mut billing = spawn_billing(Options::default()).await;
    let fixtures: Vec<String> =
        std::fs::read_dir(tollgate_test_support::fixtures::fixtures_dir().join("complete"))
            .unwrap()
            .map(|e| format!("complete/{}", e.unwrap().file_name().to_string_lossy()))
            // A dispute waits (retries) until its payment is known: see disputes.rs.
            .filter(|f| !f.contains("charge.dispute.created"))
            .collect();
    let mut ids = Vec::new();
    for fixture in &fixtures {
        let (id, body) = fresh_event(fixture, false);
        let event_type = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_string();
        billing.publish_event(&id, &event_type, &body).await;
        billing.publish_event(&id, &event_type, &body).await;
        ids.push((id, event_type, body));
    }
    let expected = ids.len() as i64;
    eventually("all events stored", Duration::from_secs(20), || async {
        billing.event_count().await == expected
    })
    .await;
    billing.stop().await;
    assert_eq!(
        billing.ready_messages(BILLING_QUEUE).await,
        0,
        "every delivery acknowledged"
    );

    for (id, event_type, body) in &ids {
        let (stored_type, status, attempts, payload): (String, String, i32, serde_json::Value) =
            sqlx::query_as(
                "SELECT type, status, attempts, payload FROM stripe_events WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&billing.pool)
            .await
            .unwrap();
        assert_eq!(&stored_type, event_type);
        // Not acted on: refund objects, and a payment-mode checkout
        // that is not one of our credit top-ups (no `credits` metadata).
        let ignored = ["refund.created", "checkout.session.completed"];
        let expected = if ignored.contains(&event_type.as_str()) {
            "ignored"
        } else {
            "processed"
        };
        assert_eq!(status, expected, "{event_type}");
        assert_eq!(attempts, 1);
        assert_eq!(
            payload,
            serde_json::from_slice::<serde_json::Value>(body).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_store_each_event_once_under_heavy_duplication() {
    let mut billing = spawn_billing(Options {
        instances: 2,
        ..Options::default()
    })
    .await;
    let events: Vec<_> = (0..40).map(|_| event("charge.captured")).collect();
    for _ in 0..3 {
        for (id, body) in &events {
            billing.publish_event(id, "charge.captured", body).await;
        }
    }
    eventually("40 events stored", Duration::from_secs(30), || async {
        billing.event_count().await == 40
    })
    .await;
    billing.stop().await;
    assert_eq!(billing.ready_messages(BILLING_QUEUE).await, 0);
    let not_once: Vec<(String, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM stripe_events WHERE attempts <> 1 OR status <> 'ignored'",
    )
    .fetch_all(&billing.pool)
    .await
    .unwrap();
    assert!(not_once.is_empty(), "{not_once:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_event_type_is_stored_and_acknowledged() {
    let mut billing = spawn_billing(Options::default()).await;
    let (id, body) = event("brand_new.thing.happened");
    billing
        .publish_event(&id, "brand_new.thing.happened", &body)
        .await;
    eventually("stored", Duration::from_secs(10), || async {
        billing.event_count().await == 1
    })
    .await;
    billing.stop().await;
    let status: String = sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = $1")
        .bind(&id)
        .fetch_one(&billing.pool)
        .await
        .unwrap();
    assert_eq!(status, "ignored");
    assert_eq!(billing.ready_messages(BILLING_QUEUE).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_report_a_consuming_billing() {
    let mut billing = spawn_billing(Options::default()).await;
    let base = format!("http://127.0.0.1:{}", billing.http_ports[0]);
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let request = client.get(format!("{base}{path}"));
        async move { request.send().await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    let ready = get("/readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );
    let (id, body) = event("charge.captured");
    billing.publish_event(&id, "charge.captured", &body).await;
    eventually("the event is stored", Duration::from_secs(10), || async {
        billing.event_count().await == 1
    })
    .await;
    let metrics = get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tollgate_billing_events_total{outcome=\"ignored\"}")),
        "{metrics}"
    );
    billing.stop().await;
}
