//! `stripe_events`: the idempotency ledger and audit trail.

use sqlx::{PgPool, Postgres, Transaction};
use tollgate_events::EventEnvelope;

/// Whether this delivery is the first to apply the event.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not applied before: apply it in this transaction.
    New,
    /// Already applied (or ignored): acknowledge with no effect.
    Duplicate,
}

/// Terminal state of an applied event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Effects written.
    Processed,
    /// Stored only: a type billing does not act on.
    Ignored,
}

impl Applied {
    fn status(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Ignored => "ignored",
        }
    }
}

/// Inserts the event row, or takes over a row left by an earlier failed
/// attempt. Locks the row until the transaction ends, so a concurrent duplicate
/// waits and then sees it applied. The row is written as `processed` at once:
/// if anything fails the transaction rolls back and it was never written, so a
/// second round trip to mark it is only needed for the rarer `ignored`.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
    attempt: u32,
) -> Result<Claim, sqlx::Error> {
    let claimed: Option<String> = sqlx::query_scalar(
        "INSERT INTO stripe_events (id, type, created, livemode, api_version, account, payload, status, attempts,
                                    processed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'processed', $8, now())
         ON CONFLICT (id) DO UPDATE SET attempts = GREATEST(stripe_events.attempts, EXCLUDED.attempts),
                                        payload = COALESCE(stripe_events.payload, EXCLUDED.payload),
                                        status = 'processed', processed_at = now(), last_error = NULL
             WHERE stripe_events.status IN ('failed', 'dead_lettered')
         RETURNING id",
    )
    .bind(&envelope.id)
    .bind(&envelope.event_type)
    .bind(envelope.created)
    .bind(envelope.livemode)
    .bind(&envelope.api_version)
    .bind(&envelope.account)
    .bind(payload)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(if claimed.is_some() {
        Claim::New
    } else {
        Claim::Duplicate
    })
}

/// Marks the claimed event applied; commits with its effects.
pub async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    event_id: &str,
    applied: Applied,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE stripe_events SET status = $2, processed_at = now(), last_error = NULL WHERE id = $1",
    )
    .bind(event_id)
    .bind(applied.status())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records a failed attempt outside the (rolled back) processing transaction.
/// Never overwrites an applied event.
pub async fn record_failure(
    pool: &PgPool,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
    attempt: u32,
    error: &str,
    dead_lettered: bool,
) -> Result<(), sqlx::Error> {
    let status = if dead_lettered {
        "dead_lettered"
    } else {
        "failed"
    };
    sqlx::query(
        "INSERT INTO stripe_events (id, type, created, livemode, api_version, account, payload, status, attempts, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,
                                        attempts = GREATEST(stripe_events.attempts, EXCLUDED.attempts),
                                        last_error = EXCLUDED.last_error
             WHERE stripe_events.status IN ('failed', 'dead_lettered')",
    )
    .bind(&envelope.id)
    .bind(&envelope.event_type)
    .bind(envelope.created)
    .bind(envelope.livemode)
    .bind(&envelope.api_version)
    .bind(&envelope.account)
    .bind(payload)
    .bind(status)
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A message billing gave up on, for an operator (`tollgate dead-letters`): a
/// `dead_letters` row with the exact bytes to replay, and the event's ledger row (when
/// the body was an event) marked `dead_lettered`.
pub struct DeadLetter<'a> {
    /// The event, when the body decoded as one.
    pub event: Option<(&'a EventEnvelope, &'a serde_json::Value)>,
    /// Where it came from: the AMQP routing key (the event type), or how it was fetched.
    pub routing_key: &'a str,
    pub body: &'a [u8],
    pub error: &'a str,
    pub attempts: u32,
}

/// Records `letter` (see [`DeadLetter`]).
pub async fn record_dead_letter(pool: &PgPool, letter: DeadLetter<'_>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO dead_letters (event_id, event_type, routing_key, payload, error, attempts)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(letter.event.map(|(e, _)| e.id.as_str()))
    .bind(letter.event.map(|(e, _)| e.event_type.as_str()))
    .bind(letter.routing_key)
    .bind(letter.body)
    .bind(letter.error)
    .bind(i32::try_from(letter.attempts).unwrap_or(i32::MAX))
    .execute(pool)
    .await?;
    if let Some((envelope, payload)) = letter.event {
        record_failure(pool, envelope, payload, letter.attempts, letter.error, true).await?;
    }
    Ok(())
}
