//! Declares the topology described in `tollgate_events::topology`. Idempotent:
//! every service calls it on (re)connect, so start order does not matter.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};
use tollgate_events::topology::*;

fn quorum_queue_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    arguments
}

/// Declares exchanges, queues and bindings. If a queue already exists with other
/// arguments the broker refuses (PRECONDITION_FAILED) and the error says which.
pub async fn declare_topology(channel: &Channel) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };

    channel
        .exchange_declare(
            EVENTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_declare(
            DEAD_LETTER_EXCHANGE.into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    channel
        .exchange_declare(
            ENTITLEMENT_CHANGES_EXCHANGE.into(),
            ExchangeKind::Fanout,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;

    channel
        .queue_declare(
            DEAD_LETTER_QUEUE.into(),
            durable_queue,
            quorum_queue_arguments(),
        )
        .await?;
    channel
        .queue_bind(
            DEAD_LETTER_QUEUE.into(),
            DEAD_LETTER_EXCHANGE.into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let mut billing = quorum_queue_arguments();
    billing.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)),
    );
    billing.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(BILLING_DELIVERY_LIMIT),
    );
    // At-least-once dead-lettering: the broker keeps a message until the dead-letter
    // queue has confirmed it, so a poison event is never dropped in transit. It
    // requires the reject-publish overflow behaviour.
    billing.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString(LongString::from("at-least-once")),
    );
    billing.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish")),
    );
    channel
        .queue_declare(BILLING_QUEUE.into(), durable_queue, billing)
        .await?;
    channel
        .queue_bind(
            BILLING_QUEUE.into(),
            EVENTS_EXCHANGE.into(),
            BILLING_BINDING.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    for (queue, delay_ms) in BILLING_RETRY_QUEUES {
        let mut retry = quorum_queue_arguments();
        retry.insert("x-message-ttl".into(), AMQPValue::LongUInt(*delay_ms));
        // Back through the default exchange, straight onto the billing queue.
        retry.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        retry.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(BILLING_QUEUE)),
        );
        retry.insert(
            "x-dead-letter-strategy".into(),
            AMQPValue::LongString(LongString::from("at-least-once")),
        );
        retry.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        channel
            .queue_declare((*queue).into(), durable_queue, retry)
            .await?;
    }
    Ok(())
}
