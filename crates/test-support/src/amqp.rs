//! Watching what reaches the broker: a tap queue on an exchange, and the next
//! delivery on any queue.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};

/// A fresh exclusive queue bound to `exchange` with `binding`, consumed by the
/// test. Declare it before the messages it should see are published.
pub async fn tap(connection: &Connection, exchange: &str, binding: &str) -> (Channel, Consumer) {
    let channel = connection.create_channel().await.expect("channel");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("tap queue");
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            binding.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("tap binding");
    let consumer = consume_on(&channel, queue.name().as_str()).await;
    (channel, consumer)
}

/// Consumes an existing queue (e.g. the dead-letter queue).
pub async fn consume(connection: &Connection, queue: &str) -> (Channel, Consumer) {
    let channel = connection.create_channel().await.expect("channel");
    let consumer = consume_on(&channel, queue).await;
    (channel, consumer)
}

async fn consume_on(channel: &Channel, queue: &str) -> Consumer {
    channel
        .basic_consume(
            queue.into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consumer")
}

/// The next message, acknowledged; panics after `within`.
pub async fn next_delivery(consumer: &mut Consumer, within: Duration) -> Delivery {
    let delivery = tokio::time::timeout(within, consumer.next())
        .await
        .unwrap_or_else(|_| panic!("a message arrives within {within:?}"))
        .expect("consumer open")
        .expect("delivery ok");
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    delivery
}
