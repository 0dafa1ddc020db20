//! Applying one message: decode, claim in the ledger, apply, commit — all or nothing.

use std::sync::Arc;

use sqlx::PgPool;
use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tollgate_stripe::{Fallback, Fetched, Refetcher};
use tracing::Instrument;

use crate::customers::Source;
use crate::db::Tx;
use crate::ledger::{self, Applied, Claim};
use crate::refetch::{Handled, Refetch};

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied(Applied),
    Duplicate,
}

/// Why a message could not be applied, which decides what happens to it.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Retrying cannot help (not an event, a payload we cannot decode, a
    /// constraint the data breaks): dead-letter it at once with this error.
    #[error("poison message: {0}")]
    Poison(String),
    /// May succeed later (database unreachable, deadlock, serialisation failure):
    /// retry after a delay.
    #[error("transient failure: {0}")]
    Transient(String),
}

impl ProcessError {
    pub fn is_poison(&self) -> bool {
        matches!(self, Self::Poison(_))
    }
}

impl From<sqlx::Error> for ProcessError {
    fn from(error: sqlx::Error) -> Self {
        // SQLSTATE class 23 (integrity constraint violation) and 22 (data exception)
        // will fail the same way every time; everything else may pass on a retry.
        let permanent = error
            .as_database_error()
            .and_then(|e| e.code())
            .is_some_and(|code| code.starts_with("23") || code.starts_with("22"));
        if permanent {
            Self::Poison(error.to_string())
        } else {
            Self::Transient(error.to_string())
        }
    }
}

/// A message body decoded far enough to be stored.
pub struct Decoded {
    pub envelope: EventEnvelope,
    pub payload: serde_json::Value,
}

pub fn decode(body: &[u8]) -> Result<Decoded, ProcessError> {
    let not_an_event = |e: tollgate_events::EnvelopeError| {
        ProcessError::Poison(format!("not a Stripe event: {e}"))
    };
    // Parsed once; the envelope is read from the parsed value.
    let payload: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| not_an_event(tollgate_events::EnvelopeError::Json(e)))?;
    let envelope = EventEnvelope::from_value(&payload).map_err(not_an_event)?;
    Ok(Decoded { envelope, payload })
}

impl Decoded {
    /// The Stripe customer the event is about, when the payload names one: the
    /// order in which a batch takes its customers' row locks.
    fn customer_key(&self) -> Option<&str> {
        let object = self.payload.pointer("/data/object")?;
        let customer = match object.get("customer") {
            Some(serde_json::Value::String(id)) => Some(id.as_str()),
            Some(expanded) => expanded.get("id").and_then(serde_json::Value::as_str),
            None => None,
        };
        customer.or_else(|| {
            (object.get("object")?.as_str()? == "customer")
                .then(|| object.get("id")?.as_str())
                .flatten()
        })
    }
}

/// Applies the event once: the ledger row and every effect commit together, or
/// nothing does.
///
/// A subscription or invoice snapshot that ties ambiguously with the stored one (and a
/// Stripe client is configured) stops its handler: the transaction is rolled back, so
/// no row lock or connection is held while the object is refetched (bounded by
/// `STRIPE_TIMEOUT_MS`), and the event runs again with Stripe's copy (crate::refetch).
pub async fn apply(
    pool: &PgPool,
    plans: &Plans,
    refetcher: &Refetcher,
    event: &Decoded,
    attempt: u32,
) -> Result<Outcome, ProcessError> {
    apply_from(pool, plans, refetcher, event, attempt, Source::Webhook).await
}

/// [`apply`] for an event that reached billing another way than its webhook
/// (`Source::Reconciliation`: fetched by `tollgate reconcile` or made by `tollgate
/// backfill`): the same ledger, handlers and gate; only the audit's trigger differs.
pub async fn apply_from(
    pool: &PgPool,
    plans: &Plans,
    refetcher: &Refetcher,
    event: &Decoded,
    attempt: u32,
    source: Source,
) -> Result<Outcome, ProcessError> {
    let mut fetched: Option<Result<Arc<Fetched>, Fallback>> = None;
    // Two runs at most: the second has the refetch's result and never asks again.
    for _ in 0..2 {
        let refetch = match &fetched {
            None if refetcher.is_enabled() => Refetch::Ask,
            None => Refetch::Off,
            Some(result) => Refetch::Fetched(result.as_deref().ok()),
        };
        let started = std::time::Instant::now();
        let mut tx = Tx::begin(pool).await?;
        let outcome = match run_in(&mut tx, plans, refetch, event, attempt, source).await? {
            Ran::Done(outcome) => outcome,
            Ran::Refetch(ambiguity) => {
                tx.rollback().await?;
                tracing::info!(
                    object = ambiguity.kind.as_str(),
                    id = ambiguity.id,
                    second = ambiguity.second,
                    "ambiguous same-second snapshots; refetching from Stripe"
                );
                fetched = Some(
                    refetcher
                        .refetch(ambiguity.kind, &ambiguity.id, ambiguity.not_before())
                        .await,
                );
                continue;
            }
        };
        tx.commit().await?;
        metrics::histogram!("tollgate_billing_transaction_seconds", "kind" => "single")
            .record(started.elapsed());
        count(event, &outcome);
        return Ok(outcome);
    }
    // Unreachable by construction; retried like any transient failure if it ever is not.
    Err(ProcessError::Transient(
        "a handler asked for a second refetch".into(),
    ))
}

/// Applies several events in ONE transaction (group commit): each is claimed in
/// the ledger and applied as if alone, and all commit together or none does.
/// A failure fails the whole batch; the caller then applies its events one by
/// one, so one bad event never takes good ones down with it.
///
/// Events about one customer keep their relative order; customers are visited in
/// a fixed order so that concurrent batches take row locks in the same order.
/// An event whose snapshot ties ambiguously fails the batch too: applied alone,
/// it gets its refetch outside any transaction.
pub async fn apply_batch(
    pool: &PgPool,
    plans: &Plans,
    refetcher: &Refetcher,
    events: &[(&Decoded, u32, &tracing::Span)],
) -> Result<Vec<Outcome>, ProcessError> {
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by_key(|&i| events[i].0.customer_key());
    let mut outcomes: Vec<Option<Outcome>> = (0..events.len()).map(|_| None).collect();
    let started = std::time::Instant::now();
    let mut tx = Tx::begin(pool).await?;
    // Two statements for the whole batch: claim every event, then lock every stored
    // customer the new ones are about (both in a fixed order).
    let claims = {
        let claiming: Vec<_> = events
            .iter()
            .map(|(event, attempt, _)| (&event.envelope, &event.payload, *attempt))
            .collect();
        ledger::claim_all(&mut tx, &claiming).await?
    };
    let mut customers: Vec<&str> = order
        .iter()
        .filter(|&&i| claims[i] == Claim::New)
        .filter_map(|&i| events[i].0.customer_key())
        .collect();
    customers.dedup();
    crate::customers::lock_existing(&mut tx, &customers).await?;
    for i in order {
        let (event, _, span) = events[i];
        if claims[i] == Claim::Duplicate {
            outcomes[i] = Some(Outcome::Duplicate);
            continue;
        }
        let refetch = if refetcher.is_enabled() {
            Refetch::Ask
        } else {
            Refetch::Off
        };
        // Under the event's own span, so what it writes (outbox rows) joins its trace.
        let handled = handle_claimed(&mut tx, plans, refetch, event, Source::Webhook)
            .instrument(span.clone())
            .await?;
        outcomes[i] = Some(match handled {
            Ran::Done(outcome) => outcome,
            Ran::Refetch(_) => {
                return Err(ProcessError::Transient(format!(
                    "event {} needs a refetch; applying it alone",
                    event.envelope.id
                )));
            }
        });
    }
    tx.commit().await?;
    metrics::histogram!("tollgate_billing_transaction_seconds", "kind" => "batch")
        .record(started.elapsed());
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.expect("every event visited"))
        .collect();
    for (outcome, (event, _, _)) in outcomes.iter().zip(events) {
        count(event, outcome);
    }
    Ok(outcomes)
}

/// Metrics of one event whose transaction committed (never before: a rolled-back
/// event is counted when it finally commits, a duplicate only as a duplicate).
fn count(event: &Decoded, outcome: &Outcome) {
    let label = match outcome {
        Outcome::Duplicate => "duplicate",
        Outcome::Applied(Applied::Processed) => "processed",
        Outcome::Applied(Applied::Ignored) => "ignored",
    };
    metrics::counter!("tollgate_billing_events_total", "outcome" => label).increment(1);
    crate::business::committed(&event.envelope, &event.payload, outcome);
}

/// What one event did inside a transaction.
enum Ran {
    Done(Outcome),
    /// Its handler stopped: the object must be refetched outside the transaction.
    Refetch(crate::refetch::Ambiguity),
}

/// One event inside `tx`: claimed in the ledger, then handled. A duplicate writes
/// nothing (the claim's upsert matched no row), so it needs no rollback, even in
/// a batch; a handler that asks for a refetch leaves the rollback to the caller.
async fn run_in(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    event: &Decoded,
    attempt: u32,
    source: Source,
) -> Result<Ran, ProcessError> {
    if ledger::claim(tx, &event.envelope, &event.payload, attempt).await? == Claim::Duplicate {
        return Ok(Ran::Done(Outcome::Duplicate));
    }
    handle_claimed(tx, plans, refetch, event, source).await
}

/// A claimed event's handler, inside `tx`.
async fn handle_claimed(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    event: &Decoded,
    source: Source,
) -> Result<Ran, ProcessError> {
    let handled =
        crate::handlers::apply(tx, plans, refetch, &event.envelope, &event.payload, source).await?;
    let applied = match handled {
        Handled::Applied(applied) => applied,
        Handled::Refetch(ambiguity) => return Ok(Ran::Refetch(ambiguity)),
    };
    // Types without a handler are stored and acknowledged ("ignored").
    if applied == Applied::Ignored {
        ledger::finish(tx, &event.envelope.id, applied).await?;
    }
    Ok(Ran::Done(Outcome::Applied(applied)))
}
