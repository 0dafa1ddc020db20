//! `stripe_events`: the idempotency ledger and audit trail.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use tollgate_events::EventEnvelope;

use crate::db::Tx;

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
    tx: &mut Tx,
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

/// [`claim`] for a batch, in one statement. Rows are claimed in event-id order,
/// so two batches holding the same (duplicated) events wait on each other instead
/// of deadlocking. An id twice in `events` is claimed once: the later copy is a
/// duplicate.
pub async fn claim_all(
    tx: &mut Tx,
    events: &[(&EventEnvelope, &serde_json::Value, u32)],
) -> Result<Vec<Claim>, sqlx::Error> {
    // The first copy of each id is the one that may claim it.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(events.len());
    let unique: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(i, (envelope, ..))| *first.entry(envelope.id.as_str()).or_insert(*i) == *i)
        .map(|(_, event)| event)
        .collect();
    let ids: Vec<&str> = unique.iter().map(|(e, ..)| e.id.as_str()).collect();
    let types: Vec<&str> = unique.iter().map(|(e, ..)| e.event_type.as_str()).collect();
    let created: Vec<i64> = unique.iter().map(|(e, ..)| e.created).collect();
    let livemode: Vec<bool> = unique.iter().map(|(e, ..)| e.livemode).collect();
    let api_versions: Vec<Option<&str>> = unique
        .iter()
        .map(|(e, ..)| e.api_version.as_deref())
        .collect();
    let accounts: Vec<Option<&str>> = unique.iter().map(|(e, ..)| e.account.as_deref()).collect();
    let payloads: Vec<&serde_json::Value> = unique.iter().map(|(_, payload, _)| *payload).collect();
    let attempts: Vec<i32> = unique
        .iter()
        .map(|(.., attempt)| i32::try_from(*attempt).unwrap_or(i32::MAX))
        .collect();
    let claimed: Vec<String> = sqlx::query_scalar(
        "INSERT INTO stripe_events (id, type, created, livemode, api_version, account, payload, status, attempts,
                                    processed_at)
         SELECT id, type, created, livemode, api_version, account, payload, 'processed', attempts, now()
           FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bool[], $5::text[], $6::text[], $7::jsonb[],
                       $8::int[]) AS e(id, type, created, livemode, api_version, account, payload, attempts)
          ORDER BY id
         ON CONFLICT (id) DO UPDATE SET attempts = GREATEST(stripe_events.attempts, EXCLUDED.attempts),
                                        payload = COALESCE(stripe_events.payload, EXCLUDED.payload),
                                        status = 'processed', processed_at = now(), last_error = NULL
             WHERE stripe_events.status IN ('failed', 'dead_lettered')
         RETURNING id",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&created)
    .bind(&livemode)
    .bind(&api_versions)
    .bind(&accounts)
    .bind(&payloads)
    .bind(&attempts)
    .fetch_all(&mut **tx)
    .await?;
    let claimed: HashSet<&str> = claimed.iter().map(String::as_str).collect();
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, (envelope, ..))| {
            let id = envelope.id.as_str();
            if claimed.contains(id) && first.get(id) == Some(&i) {
                Claim::New
            } else {
                Claim::Duplicate
            }
        })
        .collect())
}

/// Marks the claimed event applied; commits with its effects.
pub async fn finish(tx: &mut Tx, event_id: &str, applied: Applied) -> Result<(), sqlx::Error> {
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
