//! The confirmed publisher against a real RabbitMQ (one vhost per test).

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use tollgate_broker::{PublishError, Publisher, PublisherConfig};
use tollgate_events::topology::{BILLING_QUEUE, DEAD_LETTER_QUEUE, EVENTS_EXCHANGE};
use tollgate_test_support::{TcpProxy, TestVhost};

fn config(url: String) -> PublisherConfig {
    PublisherConfig {
        url,
        connection_name: "publisher-test".into(),
        channels: 2,
        confirm_timeout: Duration::from_secs(5),
        declare_topology: true,
    }
}

/// A direct connection for the test's own checks; keep the connection alive while using the channel.
async fn admin_channel(vhost: &TestVhost) -> (lapin::Connection, Channel) {
    let connection = tollgate_broker::connect(&vhost.amqp_url(), "admin")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    (connection, channel)
}

async fn passive_count(channel: &Channel, queue: &str) -> u32 {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("queue {queue} exists: {e}"))
        .message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_publish_reaches_the_billing_queue_and_topology_is_idempotent() {
    let vhost = TestVhost::create();
    let publisher = Publisher::start(config(vhost.amqp_url()));
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);
    // A second service declaring the same topology must not fail.
    let second = Publisher::start(config(vhost.amqp_url()));
    assert!(second.wait_ready(Duration::from_secs(10)).await);

    for i in 0..3 {
        publisher
            .publish(
                EVENTS_EXCHANGE,
                "invoice.paid",
                format!("{{\"n\":{i}}}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .expect("confirmed");
    }
    let (_connection, admin) = admin_channel(&vhost).await;
    assert_eq!(passive_count(&admin, BILLING_QUEUE).await, 3);
    assert_eq!(passive_count(&admin, DEAD_LETTER_QUEUE).await, 0);
    publisher.close().await;
    assert!(!publisher.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_message_is_an_error_not_a_success() {
    let vhost = TestVhost::create();
    let (_connection, admin) = admin_channel(&vhost).await;
    admin
        .exchange_declare(
            "nowhere".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = Publisher::start(config(vhost.amqp_url()));
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);
    let result = publisher
        .publish("nowhere", "x", b"{}", BasicProperties::default())
        .await;
    assert!(
        matches!(result, Err(PublishError::Unroutable)),
        "{result:?}"
    );
    // The connection is still usable afterwards.
    publisher
        .publish(
            EVENTS_EXCHANGE,
            "invoice.paid",
            b"{}",
            BasicProperties::default(),
        )
        .await
        .expect("still publishing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_nack_is_an_error() {
    let vhost = TestVhost::create();
    let (_connection, admin) = admin_channel(&vhost).await;
    admin
        .exchange_declare(
            "full".into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // A queue that can hold nothing and refuses instead of dropping: the broker nacks.
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    admin
        .queue_declare("full".into(), QueueDeclareOptions::default(), arguments)
        .await
        .unwrap();
    admin
        .queue_bind(
            "full".into(),
            "full".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publisher = Publisher::start(config(vhost.amqp_url()));
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);
    let result = publisher
        .publish("full", "", b"{}", BasicProperties::default())
        .await;
    assert!(matches!(result, Err(PublishError::Nacked)), "{result:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_reconnects_after_the_broker_comes_back() {
    let vhost = TestVhost::create();
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let publisher = Publisher::start(config(vhost.amqp_url_via(&proxy.addr())));
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);

    proxy.cut();
    // Whatever the publisher has noticed so far, a publish now cannot succeed.
    let result = publisher
        .publish(
            EVENTS_EXCHANGE,
            "invoice.paid",
            b"{}",
            BasicProperties::default(),
        )
        .await;
    assert!(result.is_err(), "{result:?}");
    for _ in 0..100 {
        if !publisher.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!publisher.is_ready(), "the lost connection is noticed");
    let result = publisher
        .publish(
            EVENTS_EXCHANGE,
            "invoice.paid",
            b"{}",
            BasicProperties::default(),
        )
        .await;
    assert!(
        matches!(result, Err(PublishError::NotConnected)),
        "{result:?}"
    );

    proxy.restore();
    assert!(
        publisher.wait_ready(Duration::from_secs(15)).await,
        "reconnected"
    );
    publisher
        .publish(
            EVENTS_EXCHANGE,
            "invoice.paid",
            b"{\"after\":true}",
            BasicProperties::default(),
        )
        .await
        .expect("publishing again");
    let (_connection, admin) = admin_channel(&vhost).await;
    // The publish made while cut failed, yet its frame may have reached the broker
    // before the cut took hold: a failed publish is "maybe delivered", which is why
    // every consumer deduplicates. The one published after reconnecting is there.
    let mut bodies = Vec::new();
    while let Some(message) = admin
        .basic_get(
            BILLING_QUEUE.into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        bodies.push(String::from_utf8_lossy(&message.delivery.data).into_owned());
    }
    assert!(bodies.iter().any(|b| b == "{\"after\":true}"), "{bodies:?}");
    assert!(bodies.len() <= 2, "{bodies:?}");
}
