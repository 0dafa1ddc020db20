//! Dead letters: list, inspect and replay the events billing gave up on (used by
//! `tollgate dead-letters` and the admin HTTP API).
//!
//! The `dead_letters` table is the review record; the broker's
//! `tollgate.dead-letter` queue holds the same messages. Replaying publishes the
//! recorded bytes back onto the billing queue (confirmed), removes the broker's
//! copy, and marks the row replayed with who did it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tollgate_broker::lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use tollgate_broker::lapin::types::{AMQPValue, FieldTable, LongString};
use tollgate_broker::lapin::{self, BasicProperties};
use tollgate_broker::{Publisher, PublisherConfig};
use tollgate_events::topology::{BILLING_QUEUE, DEAD_LETTER_QUEUE, headers};

#[derive(Debug, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub routing_key: String,
    pub payload: Vec<u8>,
    pub error: String,
    pub attempts: i32,
    pub resolution: String,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {id} is already {resolution}")]
    AlreadyResolved { id: i64, resolution: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("publishing the replay: {0}")]
    Publish(#[from] tollgate_broker::PublishError),
    #[error("the broker is not reachable")]
    BrokerUnavailable,
}

/// Open dead letters (or all), oldest first.
pub async fn list(pool: &PgPool, all: bool) -> Result<Vec<DeadLetter>, DeadLetterError> {
    Ok(sqlx::query_as(
        "SELECT id, event_id, event_type, routing_key, payload, error, attempts, resolution, created_at, resolved_at, resolved_by
           FROM dead_letters WHERE $1 OR resolution = 'open' ORDER BY id",
    )
    .bind(all)
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, id: i64) -> Result<DeadLetter, DeadLetterError> {
    sqlx::query_as(
        "SELECT id, event_id, event_type, routing_key, payload, error, attempts, resolution, created_at, resolved_at, resolved_by
           FROM dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DeadLetterError::NotFound(id))
}

/// Puts the dead letter back on the billing queue as a first attempt.
pub async fn replay(
    pool: &PgPool,
    amqp_url: &str,
    id: i64,
    by: &str,
) -> Result<(), DeadLetterError> {
    let letter = get(pool, id).await?;
    if letter.resolution != "open" {
        return Err(DeadLetterError::AlreadyResolved {
            id,
            resolution: letter.resolution,
        });
    }
    let publisher = Publisher::start(PublisherConfig {
        url: amqp_url.to_string(),
        connection_name: "tollgate-cli".into(),
        channels: 1,
        confirm_timeout: Duration::from_secs(10),
        declare_topology: true,
    });
    if !publisher.wait_ready(Duration::from_secs(10)).await {
        return Err(DeadLetterError::BrokerUnavailable);
    }
    let mut table = FieldTable::default();
    table.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(1));
    table.insert(
        "x-tollgate-replay-of".into(),
        AMQPValue::LongString(LongString::from(id.to_string())),
    );
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_headers(table);
    if let Some(event_id) = &letter.event_id {
        properties = properties.with_message_id(event_id.as_str().into());
    }
    if let Some(event_type) = &letter.event_type {
        properties = properties.with_type(event_type.as_str().into());
    }
    // Straight onto billing's queue through the default exchange: only billing sees it again.
    publisher
        .publish("", BILLING_QUEUE, &letter.payload, properties)
        .await?;
    publisher.close().await;
    remove_broker_copy(amqp_url, &letter).await?;
    sqlx::query(
        "UPDATE dead_letters SET resolution = 'replayed', resolved_at = now(), resolved_by = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Takes the matching message off `tollgate.dead-letter`, leaving the others.
async fn remove_broker_copy(amqp_url: &str, letter: &DeadLetter) -> Result<(), DeadLetterError> {
    let connection = tollgate_broker::connect(amqp_url, "tollgate-cli").await?;
    let channel = connection.create_channel().await?;
    let mut others = Vec::new();
    // Bounded: a dead-letter queue is short, and this is an operator's command.
    for _ in 0..10_000 {
        let Some(message) = channel
            .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
            .await?
        else {
            break;
        };
        let delivery = message.delivery;
        let same_event = letter.event_id.as_deref().is_some_and(|id| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str())
                == Some(id)
        });
        if same_event || delivery.data == letter.payload {
            delivery.acker.ack(BasicAckOptions::default()).await?;
            break;
        }
        others.push(delivery);
    }
    for delivery in others {
        delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            })
            .await?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}
