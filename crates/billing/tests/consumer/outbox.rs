//! Entitlement changes leave through the outbox: one per committed access
//! change, in version order, and none lost when billing dies before relaying.

use std::time::Duration;

use serde_json::Value;
use tollgate_billing::{Application, Config};
use tollgate_broker::lapin;
use tollgate_events::topology::ENTITLEMENT_CHANGES_EXCHANGE;
use tollgate_runtime::Env;
use tollgate_test_support::amqp;

use crate::helpers::*;
use crate::subscriptions::{T0, deliver, settle, subscription_event};

async fn changes_tap(
    billing: &TestBilling,
) -> (lapin::Connection, lapin::Channel, lapin::Consumer) {
    let connection = billing.broker().await;
    let (channel, consumer) = amqp::tap(&connection, ENTITLEMENT_CHANGES_EXCHANGE, "").await;
    (connection, channel, consumer)
}

async fn next_change(consumer: &mut lapin::Consumer) -> Value {
    let delivery = amqp::next_delivery(consumer, Duration::from_secs(10)).await;
    serde_json::from_slice(&delivery.data).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_access_change_is_announced_once_in_version_order() {
    let mut billing = spawn_billing(Options::default()).await;
    let (_connection, _channel, mut changes) = changes_tap(&billing).await;
    let (sub, cus) = ("sub_outbox", "cus_outbox");
    deliver(
        &billing,
        &[subscription_event(
            "customer.subscription.created",
            T0,
            sub,
            cus,
            "active",
            "price_pro_monthly",
        )],
    )
    .await;
    let first = next_change(&mut changes).await;
    assert_eq!(first["stripe_customer_id"], cus);
    assert_eq!(first["access_status"], "active");
    assert_eq!(first["tier"], "pro");
    assert_eq!(first["customer_version"], 1);

    // A duplicate changes nothing and announces nothing; a cancellation does.
    deliver(
        &billing,
        &[
            subscription_event(
                "customer.subscription.created",
                T0,
                sub,
                cus,
                "active",
                "price_pro_monthly",
            ),
            subscription_event(
                "customer.subscription.deleted",
                T0 + 10,
                sub,
                cus,
                "canceled",
                "price_pro_monthly",
            ),
        ],
    )
    .await;
    let second = next_change(&mut changes).await;
    assert_eq!(second["access_status"], "canceled");
    assert_eq!(second["tier"], "free");
    assert_eq!(second["customer_version"], 2);
    assert!(second["version"].as_i64() > first["version"].as_i64());
    settle(&billing, 2).await;
    billing.stop().await;
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM entitlement_outbox WHERE published_at IS NULL")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(unpublished, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_committed_by_a_process_that_died_before_relaying_are_announced_later() {
    // A billing process that commits but never relays (as if killed right after commit).
    let mut billing = spawn_billing(Options {
        instances: 0,
        ..Options::default()
    })
    .await;
    let (_connection, _channel, mut changes) = changes_tap(&billing).await;
    let silent = Application::build(
        Config::from_env(&Env::from_pairs([
            ("DATABASE_URL", billing.database_url()),
            ("AMQP_URL", billing.vhost.amqp_url()),
            ("TOLLGATE_PLANS", plans_path()),
            ("BILLING_OUTBOX_RELAY", "false".into()),
        ]))
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(silent.wait_consuming(Duration::from_secs(20)).await);
    let stopper = silent.stopper();
    let running = tokio::spawn(silent.run_until_stopped());
    deliver(
        &billing,
        &[subscription_event(
            "customer.subscription.created",
            T0,
            "sub_dead",
            "cus_dead",
            "active",
            "price_pro_monthly",
        )],
    )
    .await;
    settle(&billing, 1).await;
    stopper.stop();
    running.await.unwrap().unwrap();
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM entitlement_outbox WHERE published_at IS NULL")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(pending, 1, "committed, not yet announced");

    // The next billing process to start announces it.
    billing.start_instance().await;
    let change = next_change(&mut changes).await;
    assert_eq!(change["stripe_customer_id"], "cus_dead");
    assert_eq!(change["access_status"], "active");
    billing.stop().await;
}
