use std::time::Duration;

use lapin::types::AMQPValue;
use tollgate_broker::lapin;
use tollgate_events::topology::{BILLING_QUEUE, DEAD_LETTER_QUEUE};
use tollgate_test_support::amqp;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_with_its_error_and_others_keep_flowing() {
    let mut billing = spawn_billing(Options::default()).await;
    billing
        .publish_event("junk-1", "invoice.paid", b"this is not an event")
        .await;
    let (good_id, good) = event("charge.captured");
    billing
        .publish_event(&good_id, "charge.captured", &good)
        .await;

    // The dead-letter queue holds the poison message, byte for byte, with its error.
    let broker = billing.broker().await;
    let (_channel, mut dead) = amqp::consume(&broker, DEAD_LETTER_QUEUE).await;
    let delivery = amqp::next_delivery(&mut dead, Duration::from_secs(10)).await;
    assert_eq!(delivery.data, b"this is not an event");
    assert_eq!(delivery.routing_key.as_str(), "invoice.paid");
    let headers = delivery.properties.headers().clone().unwrap();
    match headers.inner().get("x-tollgate-error") {
        Some(AMQPValue::LongString(error)) => {
            assert!(error.to_string().contains("not a Stripe event"), "{error}")
        }
        other => panic!("error header: {other:?}"),
    }

    eventually(
        "the good event is stored",
        Duration::from_secs(10),
        || async { billing.event_count().await == 1 },
    )
    .await;
    // The review row is written right after the broker copy.
    eventually(
        "the dead letter is recorded",
        Duration::from_secs(10),
        || async { billing.dead_letter_count().await == 1 },
    )
    .await;
    let (error, resolution, payload): (String, String, Vec<u8>) =
        sqlx::query_as("SELECT error, resolution, payload FROM dead_letters")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert!(
        error.starts_with("poison message: not a Stripe event"),
        "{error}"
    );
    assert_eq!(resolution, "open");
    assert_eq!(payload, b"this is not an event");
    billing.stop().await;
    assert_eq!(billing.ready_messages(BILLING_QUEUE).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_retried_with_backoff_and_the_event_applied_once() {
    let mut billing = spawn_billing(Options {
        db_via_proxy: true,
        ..Options::default()
    })
    .await;
    let proxy = billing.db_proxy.take().unwrap();
    proxy.cut();
    let (id, body) = event("charge.captured");
    billing.publish_event(&id, "charge.captured", &body).await;

    // It fails, goes to the 1 s delay queue, comes back, fails again (5 s queue)...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        billing.event_count().await,
        0,
        "nothing applied while the database is away"
    );

    proxy.restore();
    eventually(
        "applied after the database returns",
        Duration::from_secs(20),
        || async { billing.event_count().await == 1 },
    )
    .await;
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM stripe_events WHERE id = $1")
            .bind(&id)
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(status, "ignored");
    assert!(attempts >= 2, "retried: attempts = {attempts}");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&billing.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    billing.stop().await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_out_of_attempts_is_dead_lettered() {
    let mut billing = spawn_billing(Options {
        db_via_proxy: true,
        max_attempts: 1,
        ..Options::default()
    })
    .await;
    let proxy = billing.db_proxy.take().unwrap();
    proxy.cut();
    let (id, body) = event("charge.captured");
    billing.publish_event(&id, "charge.captured", &body).await;
    let broker = billing.broker().await;
    let (_channel, mut dead) = amqp::consume(&broker, DEAD_LETTER_QUEUE).await;
    let delivery = amqp::next_delivery(&mut dead, Duration::from_secs(15)).await;
    assert_eq!(
        delivery.properties.message_id().as_ref().unwrap().as_str(),
        id
    );
    proxy.restore();
    billing.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_a_batch_fails_alone_while_the_rest_commit_together() {
    // Queue everything first, so the consumer finds a backlog and batches it.
    let mut billing = spawn_billing(Options {
        instances: 0,
        ..Options::default()
    })
    .await;
    let subscription = |n: usize, status: serde_json::Value| {
        let id = format!("evt_batch_{n:03}");
        let body = serde_json::json!({
            "id": id, "object": "event", "type": "customer.subscription.updated",
            "created": 1_760_000_000, "livemode": false, "api_version": "2025-03-31.basil",
            "data": { "object": {
                "id": format!("sub_batch_{n}"), "object": "subscription",
                "customer": format!("cus_batch_{n}"), "status": status,
                "items": { "object": "list", "data": [{ "price": { "id": "price_pro_monthly" } }] }
            }}
        });
        (id, serde_json::to_vec(&body).unwrap())
    };
    const GOOD: usize = 60;
    for n in 0..GOOD {
        let (id, body) = subscription(n, "active".into());
        billing
            .publish_event(&id, "customer.subscription.updated", &body)
            .await;
        if n == GOOD / 2 {
            // A well-formed event whose object cannot be decoded: poison, found
            // only by the handler, inside the batch's transaction.
            let (id, body) = subscription(999, 42.into());
            billing
                .publish_event(&id, "customer.subscription.updated", &body)
                .await;
        }
    }
    billing.start_instance().await;

    eventually(
        "every good event applied and the poison one dead-lettered",
        Duration::from_secs(30),
        || async {
            let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
                .fetch_one(&billing.pool)
                .await
                .unwrap();
            let active: i64 =
                sqlx::query_scalar("SELECT count(*) FROM customers WHERE access_status = 'active'")
                    .fetch_one(&billing.pool)
                    .await
                    .unwrap();
            dead == 1 && active == GOOD as i64
        },
    )
    .await;
    let (dead_event, error): (String, String) =
        sqlx::query_as("SELECT event_id, error FROM dead_letters")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(dead_event, "evt_batch_999");
    assert!(error.starts_with("poison message:"), "{error}");
    let processed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE status = 'processed'")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(processed, GOOD as i64);
    // Events committed in one transaction share its start time: fewer distinct
    // times than events proves the backlog was applied in batches.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT processed_at) FROM stripe_events WHERE status = 'processed'",
    )
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert!(
        transactions < GOOD as i64,
        "{transactions} transactions for {GOOD} events"
    );
    billing.stop().await;
    assert_eq!(billing.ready_messages(BILLING_QUEUE).await, 0);
}
