//! A poison event reaches the dead letters, and `tollgate dead-letters replay`
//! applies it once its cause is fixed (real billing, PostgreSQL and RabbitMQ).

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tollgate::dead_letters::{self, DeadLetterError};
use tollgate_billing::{Application, Config};
use tollgate_broker::{Publisher, PublisherConfig};
use tollgate_events::topology::{DEAD_LETTER_QUEUE, EVENTS_EXCHANGE};
use tollgate_runtime::Env;
use tollgate_test_support::{TestDatabase, TestVhost, stripe_fixture};

/// A subscription checkout for `customer` by our user `user`.
fn checkout(id: &str, customer: &str, user: &str) -> Vec<u8> {
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json",
    ))
    .unwrap();
    data["object"]["customer"] = customer.into();
    data["object"]["client_reference_id"] = user.into();
    serde_json::to_vec(&json!({ "id": id, "object": "event", "type": "checkout.session.completed",
        "created": 1_760_000_000, "livemode": false, "api_version": "2025-03-31.basil", "data": data }))
    .unwrap()
}

async fn until<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_replayed_once_its_cause_is_fixed() {
    let db = TestDatabase::create().await;
    let vhost = TestVhost::create();
    let env = Env::from_pairs([
        ("DATABASE_URL", db.url()),
        ("AMQP_URL", vhost.amqp_url()),
        (
            "TOLLGATE_PLANS",
            format!(
                "{}/config/plans.toml",
                tollgate_test_support::workspace_root().display()
            ),
        ),
    ]);
    let billing = Application::build(Config::from_env(&env).unwrap())
        .await
        .unwrap();
    assert!(billing.wait_consuming(Duration::from_secs(20)).await);
    let stopper = billing.stopper();
    let running = tokio::spawn(billing.run_until_stopped());
    let pool = db.pool().await;
    let publisher = Publisher::start(PublisherConfig {
        url: vhost.amqp_url(),
        connection_name: "test".into(),
        channels: 1,
        confirm_timeout: Duration::from_secs(5),
        declare_topology: true,
    });
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);
    let publish = async |id: &str, body: Vec<u8>| {
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_type("checkout.session.completed".into());
        publisher
            .publish(
                EVENTS_EXCHANGE,
                "checkout.session.completed",
                &body,
                properties,
            )
            .await
            .unwrap();
    };

    // The customer belongs to user_b; a checkout claiming it for user_a is refused
    // (relinking would hand user_b's subscription to someone else).
    publish("evt_first", checkout("evt_first", "cus_dl", "user_b")).await;
    // One after the other: published together, either could be applied first.
    until("the first checkout is applied", async || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM stripe_events WHERE id = 'evt_first' AND status = 'processed'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            == 1
    })
    .await;
    publish("evt_second", checkout("evt_second", "cus_dl", "user_a")).await;
    until("the refused checkout is dead-lettered", async || {
        dead_letters::list(&pool, false).await.unwrap().len() == 1
    })
    .await;
    let letter = dead_letters::list(&pool, false).await.unwrap().remove(0);
    assert_eq!(letter.event_id.as_deref(), Some("evt_second"));
    assert!(letter.error.contains("another user id"), "{}", letter.error);
    assert_eq!(letter.resolution, "open");

    // An operator resolves the conflict, then replays.
    sqlx::query("UPDATE customers SET user_id = NULL WHERE stripe_customer_id = 'cus_dl'")
        .execute(&pool)
        .await
        .unwrap();
    dead_letters::replay(&pool, &vhost.amqp_url(), letter.id, "test-admin")
        .await
        .unwrap();
    until("the replayed event is applied", async || {
        sqlx::query_scalar::<_, String>("SELECT status FROM stripe_events WHERE id = 'evt_second'")
            .fetch_one(&pool)
            .await
            .unwrap()
            == "processed"
    })
    .await;
    let user: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM customers WHERE stripe_customer_id = 'cus_dl'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(user.as_deref(), Some("user_a"));
    let replayed = dead_letters::get(&pool, letter.id).await.unwrap();
    assert_eq!(replayed.resolution, "replayed");
    assert_eq!(replayed.resolved_by.as_deref(), Some("test-admin"));
    assert!(dead_letters::list(&pool, false).await.unwrap().is_empty());

    // The broker's copy is gone, and a second replay is refused.
    let connection = tollgate_broker::connect(&vhost.amqp_url(), "test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let dlq = channel
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(dlq.message_count(), 0);
    assert!(matches!(
        dead_letters::replay(&pool, &vhost.amqp_url(), letter.id, "again").await,
        Err(DeadLetterError::AlreadyResolved { .. })
    ));

    stopper.stop();
    running.await.unwrap().unwrap();
}
