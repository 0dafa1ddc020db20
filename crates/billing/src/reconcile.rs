//! Repairing billing state from Stripe's API, through exactly the path webhooks take.
//!
//! **Reconcile** (`tollgate reconcile`) walks Stripe's events list (`GET /v1/events`, the
//! types billing handles) from a stored cursor and applies each event with
//! [`process::apply_from`]: the ledger skips those the webhooks already delivered, and
//! the others are applied once, by the same handlers, behind the same ordering gate. Access
//! changes they cause are audited with trigger source `reconciliation`. Stripe keeps events
//! for 30 days: a cursor older than that (or one Stripe no longer knows) means events were
//! lost for good, which the report says; the walk then covers everything Stripe still has,
//! and `backfill` repairs what is older.
//!
//! **Backfill** (`tollgate backfill`) lists every customer and every subscription (all
//! statuses) and feeds each object to the same handlers as a synthetic snapshot event
//! (see [`snapshot_event`] for why it is keyed by the list request's time and named by the
//! object's content).
//!
//! Both back off on 429s (and 5xx, timeouts) with bounded exponential waits, take a
//! PostgreSQL advisory lock so only one run of each works at a time, and are idempotent:
//! a second run finds everything in the ledger and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tollgate_stripe::operations::{Collection, Cursor, ListParams, Page};
use tollgate_stripe::{Backoff, Refetcher, StripeApiError, StripeClient};

use crate::customers::Source;
use crate::handlers::HANDLED_EVENT_TYPES;
use crate::ledger::{self, DeadLetter};
use crate::process::{self, Decoded, Outcome, ProcessError};

/// How long Stripe keeps events (`GET /v1/events` returns the last 30 days).
pub const STRIPE_EVENT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The most event types one list request may filter on.
const TYPES_PER_REQUEST: usize = 20;

/// Advisory lock keys: one run of each command at a time.
const RECONCILE_LOCK: i64 = 0x746f_6c6c_7265_636e; // "tollrecn"
const BACKFILL_LOCK: i64 = 0x746f_6c6c_6266_696c; // "tollbfil"

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("another `tollgate {0}` is running on this database")]
    AlreadyRunning(&'static str),
    #[error("Stripe: {0}")]
    Stripe(#[from] StripeApiError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// What the walk of one group of event types found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// `events:<hash>`: the cursor's name.
    pub stream: String,
    pub types: Vec<String>,
    /// Where the walk started.
    pub start: Start,
    pub pages: u32,
    /// Events Stripe listed.
    pub listed: u64,
    pub counts: Counts,
    /// The cursor after the run (the newest event applied), if any.
    pub cursor: Option<String>,
}

/// Where a reconcile walk started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Start {
    /// No cursor yet: every event Stripe still has (up to 30 days).
    #[default]
    NoCursor,
    /// Just after the stored cursor.
    Cursor { event_id: String, created: i64 },
    /// The cursor is older than Stripe's 30-day retention: events between it and 30 days
    /// ago are gone; every event Stripe still has was walked.
    Expired { event_id: String, created: i64 },
    /// Stripe no longer knows the cursor's event (deleted with its retention): as above.
    Unknown { event_id: String, created: i64 },
}

/// What happened to the events (or snapshots) of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Applied now (they had been missed, or were failing).
    pub applied: u64,
    /// Already in the ledger (delivered by webhook, or by an earlier run): nothing done.
    pub known: u64,
    /// Already dead-lettered: left for an operator (`tollgate dead-letters`).
    pub left_dead_lettered: u64,
    /// Could not be applied (poison, or still failing after the retries): recorded as
    /// dead letters, by event id.
    pub dead_lettered: Vec<String>,
}

impl Counts {
    fn add(&mut self, other: &Counts) {
        self.applied += other.applied;
        self.known += other.known;
        self.left_dead_lettered += other.left_dead_lettered;
        self.dead_lettered
            .extend(other.dead_lettered.iter().cloned());
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    pub streams: Vec<StreamReport>,
}

impl ReconcileReport {
    pub fn counts(&self) -> Counts {
        let mut total = Counts::default();
        for stream in &self.streams {
            total.add(&stream.counts);
        }
        total
    }

    /// Whether a gap may remain: a cursor past Stripe's retention, or unknown to it.
    pub fn events_may_be_lost(&self) -> bool {
        self.streams
            .iter()
            .any(|s| matches!(s.start, Start::Expired { .. } | Start::Unknown { .. }))
    }
}

impl std::fmt::Display for ReconcileReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.streams {
            writeln!(f, "{} ({} event types)", s.stream, s.types.len())?;
            match &s.start {
                Start::NoCursor => writeln!(
                    f,
                    "  no cursor yet: walked every event Stripe still has (Stripe keeps 30 days)"
                )?,
                Start::Cursor { event_id, created } => {
                    writeln!(f, "  from {event_id} ({})", rfc3339(*created))?
                }
                Start::Expired { event_id, created } => writeln!(
                    f,
                    "  WARNING: the cursor {event_id} ({}) is older than Stripe's 30-day event \
                     retention: events between then and 30 days ago cannot be fetched any more. \
                     Walked every event Stripe still has; run `tollgate backfill` to repair the \
                     current state of every customer and subscription.",
                    rfc3339(*created)
                )?,
                Start::Unknown { event_id, created } => writeln!(
                    f,
                    "  WARNING: Stripe no longer has the cursor's event {event_id} ({}); events \
                     may have been lost past Stripe's 30-day retention. Walked every event Stripe \
                     still has; run `tollgate backfill` to repair current state.",
                    rfc3339(*created)
                )?,
            }
            write_counts(f, s.listed, s.pages, &s.counts)?;
            writeln!(f, "  cursor: {}", s.cursor.as_deref().unwrap_or("(none)"))?;
        }
        Ok(())
    }
}

/// What backfill found and did, per collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillReport {
    pub customers: CollectionReport,
    pub subscriptions: CollectionReport,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionReport {
    pub pages: u32,
    pub listed: u64,
    pub counts: Counts,
}

impl std::fmt::Display for BackfillReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, report) in [
            ("customers", &self.customers),
            ("subscriptions (every status)", &self.subscriptions),
        ] {
            writeln!(f, "{name}")?;
            write_counts(f, report.listed, report.pages, &report.counts)?;
        }
        Ok(())
    }
}

fn write_counts(
    f: &mut std::fmt::Formatter<'_>,
    listed: u64,
    pages: u32,
    counts: &Counts,
) -> std::fmt::Result {
    writeln!(
        f,
        "  listed {listed} in {pages} pages: {} applied, {} already applied",
        counts.applied, counts.known
    )?;
    if counts.left_dead_lettered > 0 {
        writeln!(
            f,
            "  {} already dead-lettered, left for `tollgate dead-letters`",
            counts.left_dead_lettered
        )?;
    }
    if !counts.dead_lettered.is_empty() {
        writeln!(
            f,
            "  {} could not be applied and are now dead letters: {}",
            counts.dead_lettered.len(),
            counts.dead_lettered.join(", ")
        )?;
    }
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(|| unix.to_string(), |t| t.to_rfc3339())
}

/// Runs reconcile and backfill against one Stripe account and database.
pub struct Reconciler {
    pool: PgPool,
    plans: Arc<Plans>,
    stripe: StripeClient,
    refetcher: Refetcher,
    /// Waits after 429s and other transient list failures.
    pub backoff: Backoff,
    /// Objects per list request (Stripe's maximum, 100, by default).
    pub page_size: u8,
    /// Rounds of retrying events that failed transiently (a dispute whose payment's event
    /// comes later in the walk), `retry_pause` × round apart, before they are dead-lettered.
    pub retry_rounds: u32,
    pub retry_pause: Duration,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("backoff", &self.backoff)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

/// A transiently failing event, to try again after the walk.
type Deferred = serde_json::Value;

/// What became of one event.
enum Fate {
    Applied,
    Known,
    LeftDeadLettered,
    Deferred,
    DeadLettered,
}

impl Counts {
    /// Counts `event`'s fate, keeping it in `deferred` when it is to be tried again.
    fn tally(&mut self, event: &serde_json::Value, fate: Fate, deferred: &mut Vec<Deferred>) {
        match fate {
            Fate::Applied => self.applied += 1,
            Fate::Known => self.known += 1,
            Fate::LeftDeadLettered => self.left_dead_lettered += 1,
            Fate::DeadLettered => self
                .dead_lettered
                .push(event["id"].as_str().unwrap_or("?").to_string()),
            Fate::Deferred => deferred.push(event.clone()),
        }
    }
}

impl Reconciler {
    /// `refetcher` settles ambiguous same-second ties exactly as for webhooks (built from
    /// the same Stripe configuration).
    pub fn new(
        pool: PgPool,
        plans: Arc<Plans>,
        stripe: StripeClient,
        refetcher: Refetcher,
    ) -> Self {
        Self {
            pool,
            plans,
            stripe,
            refetcher,
            backoff: Backoff::default(),
            page_size: 100,
            retry_rounds: 3,
            retry_pause: Duration::from_secs(2),
        }
    }

    /// The groups of at most 20 event types reconcile asks for, each with its cursor name.
    pub fn streams() -> Vec<(String, Vec<String>)> {
        HANDLED_EVENT_TYPES
            .chunks(TYPES_PER_REQUEST)
            .map(|types| {
                let types: Vec<String> = types.iter().map(|t| t.to_string()).collect();
                let digest = hex::encode(Sha256::digest(types.join(",").as_bytes()));
                (format!("events:{}", &digest[..12]), types)
            })
            .collect()
    }

    /// Walks Stripe's events from each stream's cursor and applies what webhooks missed.
    pub async fn reconcile(&self) -> Result<ReconcileReport, ReconcileError> {
        self.locked(RECONCILE_LOCK, "reconcile", async {
            let mut report = ReconcileReport::default();
            for (stream, types) in Self::streams() {
                report
                    .streams
                    .push(self.reconcile_stream(stream, types).await?);
            }
            Ok(report)
        })
        .await
    }

    /// Lists every customer and subscription and feeds each to the webhook handlers.
    pub async fn backfill(&self) -> Result<BackfillReport, ReconcileError> {
        self.locked(BACKFILL_LOCK, "backfill", async {
            Ok(BackfillReport {
                // Customers first: their metadata links users before subscriptions arrive.
                customers: self
                    .backfill_collection(Collection::Customers, None)
                    .await?,
                subscriptions: self
                    .backfill_collection(Collection::Subscriptions, Some("all"))
                    .await?,
            })
        })
        .await
    }

    /// Runs `work` holding a session advisory lock on a connection of its own.
    async fn locked<T>(
        &self,
        key: i64,
        command: &'static str,
        work: impl Future<Output = Result<T, ReconcileError>>,
    ) -> Result<T, ReconcileError> {
        let mut connection = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            return Err(ReconcileError::AlreadyRunning(command));
        }
        let result = work.await;
        // Closing the session releases the lock even if the unlock fails.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut connection)
            .await;
        let _ = sqlx::Connection::close(connection).await;
        result
    }

    async fn reconcile_stream(
        &self,
        stream: String,
        types: Vec<String>,
    ) -> Result<StreamReport, ReconcileError> {
        let stored: Option<(String, i64)> = sqlx::query_as(
            "SELECT event_id, event_created FROM reconcile_cursors WHERE stream = $1",
        )
        .bind(&stream)
        .fetch_optional(&self.pool)
        .await?;
        let mut report = StreamReport {
            stream,
            types,
            ..Default::default()
        };
        let oldest_kept = unix_now() - STRIPE_EVENT_RETENTION.as_secs() as i64;
        report.start = match stored {
            None => Start::NoCursor,
            Some((event_id, created)) if created < oldest_kept => {
                Start::Expired { event_id, created }
            }
            Some((event_id, created)) => Start::Cursor { event_id, created },
        };
        if let Start::Cursor { event_id, created } = report.start.clone() {
            match self.walk_forward(&mut report, &event_id).await {
                Err(ReconcileError::Stripe(error)) if cursor_unknown(&error) => {
                    tracing::warn!(stream = report.stream, cursor = event_id, %error,
                                   "Stripe no longer knows the cursor; walking every event it has");
                    report.start = Start::Unknown { event_id, created };
                }
                other => return other.map(|()| report),
            }
        }
        if matches!(report.start, Start::Expired { .. }) {
            tracing::warn!(
                stream = report.stream,
                "the reconcile cursor is older than Stripe's 30-day event retention"
            );
        }
        self.walk_everything(&mut report).await?;
        Ok(report)
    }

    /// From the cursor towards the newest event, page by page, each page oldest first;
    /// the cursor moves after each page whose events are all settled.
    async fn walk_forward(
        &self,
        report: &mut StreamReport,
        from: &str,
    ) -> Result<(), ReconcileError> {
        let mut position = from.to_string();
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut newest: Option<(String, i64)> = None;
        loop {
            let page = self
                .list_events(&report.types, Cursor::NewerThan(position.clone()))
                .await?;
            report.pages += 1;
            let Some(first) = page.data.first() else {
                break;
            };
            let top = event_position(first);
            self.apply_all(page.data.iter().rev(), &mut report.counts, &mut deferred)
                .await?;
            report.listed += page.data.len() as u64;
            if let Some((id, created)) = &top {
                position = id.clone();
                if deferred.is_empty() {
                    self.save_cursor(report, id, *created).await?;
                }
            }
            newest = top.or(newest);
            if !page.has_more {
                break;
            }
        }
        self.settle(deferred, &mut report.counts).await?;
        if let Some((id, created)) = newest {
            self.save_cursor(report, &id, created).await?;
        }
        Ok(())
    }

    /// Every event Stripe has, newest first (order does not change the result: the gate
    /// keeps the newest snapshot, and an event waiting for an older one is retried after
    /// the walk). The cursor is stored once the walk is complete.
    async fn walk_everything(&self, report: &mut StreamReport) -> Result<(), ReconcileError> {
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut newest: Option<(String, i64)> = None;
        let mut cursor = Cursor::Newest;
        loop {
            let page = self.list_events(&report.types, cursor).await?;
            report.pages += 1;
            if newest.is_none() {
                newest = page.data.first().and_then(event_position);
            }
            self.apply_all(page.data.iter(), &mut report.counts, &mut deferred)
                .await?;
            report.listed += page.data.len() as u64;
            match page.data.last().and_then(|e| e["id"].as_str()) {
                Some(last) if page.has_more => cursor = Cursor::OlderThan(last.to_string()),
                _ => break,
            }
        }
        // Oldest first, as they happened.
        deferred.reverse();
        self.settle(deferred, &mut report.counts).await?;
        if let Some((id, created)) = newest {
            self.save_cursor(report, &id, created).await?;
        }
        Ok(())
    }

    async fn list_events(&self, types: &[String], cursor: Cursor) -> Result<Page, ReconcileError> {
        let mut params = ListParams::new(self.page_size, &cursor);
        params.types = types.to_vec();
        Ok(self
            .stripe
            .list_page_with_backoff(Collection::Events, &params, &self.backoff)
            .await?)
    }

    async fn save_cursor(
        &self,
        report: &mut StreamReport,
        event_id: &str,
        created: i64,
    ) -> Result<(), ReconcileError> {
        sqlx::query(
            "INSERT INTO reconcile_cursors (stream, event_types, event_id, event_created)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (stream) DO UPDATE SET event_types = EXCLUDED.event_types,
                 event_id = EXCLUDED.event_id, event_created = EXCLUDED.event_created, updated_at = now()",
        )
        .bind(&report.stream)
        .bind(&report.types)
        .bind(event_id)
        .bind(created)
        .execute(&self.pool)
        .await?;
        report.cursor = Some(event_id.to_string());
        Ok(())
    }

    async fn backfill_collection(
        &self,
        collection: Collection,
        status: Option<&str>,
    ) -> Result<CollectionReport, ReconcileError> {
        let mut report = CollectionReport::default();
        let mut deferred: Vec<Deferred> = Vec::new();
        let mut cursor = Cursor::Newest;
        loop {
            let mut params = ListParams::new(self.page_size, &cursor);
            params.status = status.map(str::to_string);
            let listed_at = SystemTime::now();
            let page = self
                .stripe
                .list_page_with_backoff(collection, &params, &self.backoff)
                .await?;
            report.pages += 1;
            report.listed += page.data.len() as u64;
            let events: Vec<serde_json::Value> = page
                .data
                .iter()
                .filter_map(|object| snapshot_event(object, listed_at))
                .collect();
            self.apply_all(events.iter(), &mut report.counts, &mut deferred)
                .await?;
            match page.data.last().and_then(|o| o["id"].as_str()) {
                Some(last) if page.has_more => cursor = Cursor::OlderThan(last.to_string()),
                _ => break,
            }
        }
        self.settle(deferred, &mut report.counts).await?;
        Ok(report)
    }

    /// Applies events in the given order. Events the ledger already settled are skipped
    /// with one query for all of them.
    async fn apply_all<'a>(
        &self,
        events: impl Iterator<Item = &'a serde_json::Value>,
        counts: &mut Counts,
        deferred: &mut Vec<Deferred>,
    ) -> Result<(), ReconcileError> {
        let events: Vec<&serde_json::Value> = events.collect();
        let ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
        let settled: HashMap<String, String> = sqlx::query_as(
            "SELECT id, status FROM stripe_events
              WHERE id = ANY($1) AND status IN ('processed', 'ignored', 'dead_lettered')",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        for event in events {
            let status = event["id"].as_str().and_then(|id| settled.get(id));
            let fate = match status.map(String::as_str) {
                Some("dead_lettered") => Fate::LeftDeadLettered,
                Some(_) => Fate::Known,
                None => self.apply_one(event, true).await?,
            };
            counts.tally(event, fate, deferred);
        }
        Ok(())
    }

    /// One event through `process::apply_from`. A poison event becomes a dead letter at
    /// once; a transient failure is deferred (`may_defer`) or, on the last round, a dead
    /// letter too. Only a dead letter that cannot be recorded (the database is gone) stops
    /// the run.
    async fn apply_one(
        &self,
        event: &serde_json::Value,
        may_defer: bool,
    ) -> Result<Fate, ReconcileError> {
        let decoded = match EventEnvelope::from_value(event) {
            Ok(envelope) => Decoded {
                envelope,
                payload: event.clone(),
            },
            Err(e) => {
                self.dead_letter(event, None, &format!("not a Stripe event: {e}"))
                    .await?;
                return Ok(Fate::DeadLettered);
            }
        };
        let result = process::apply_from(
            &self.pool,
            &self.plans,
            &self.refetcher,
            &decoded,
            1,
            Source::Reconciliation,
        )
        .await;
        match result {
            Ok(Outcome::Applied(_)) => Ok(Fate::Applied),
            Ok(Outcome::Duplicate) => Ok(Fate::Known),
            Err(ProcessError::Transient(error)) if may_defer => {
                tracing::info!(event_id = decoded.envelope.id, %error,
                               "event failed transiently; trying again after the walk");
                Ok(Fate::Deferred)
            }
            Err(error) => {
                tracing::error!(event_id = decoded.envelope.id, %error,
                                "reconciliation could not apply an event; dead-lettering it");
                self.dead_letter(event, Some(&decoded), &error.to_string())
                    .await?;
                Ok(Fate::DeadLettered)
            }
        }
    }

    /// Retries deferred events (oldest first) a few rounds; what still fails is
    /// dead-lettered, as the consumer does once its attempts are spent.
    async fn settle(
        &self,
        mut pending: Vec<Deferred>,
        counts: &mut Counts,
    ) -> Result<(), ReconcileError> {
        for round in 1..=self.retry_rounds.max(1) {
            if pending.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(self.retry_pause * round).await;
            let last_round = round == self.retry_rounds.max(1);
            let mut still = Vec::new();
            for event in pending {
                let fate = self.apply_one(&event, !last_round).await?;
                counts.tally(&event, fate, &mut still);
            }
            pending = still;
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        event: &serde_json::Value,
        decoded: Option<&Decoded>,
        error: &str,
    ) -> Result<(), ReconcileError> {
        let body = serde_json::to_vec(event).unwrap_or_default();
        let routing_key = decoded.map_or("reconciliation", |d| d.envelope.event_type.as_str());
        ledger::record_dead_letter(
            &self.pool,
            DeadLetter {
                event: decoded.map(|d| (&d.envelope, &d.payload)),
                routing_key,
                body: &body,
                error,
                attempts: 1,
            },
        )
        .await?;
        metrics::counter!("tollgate_billing_dead_letters_total").increment(1);
        Ok(())
    }
}

/// The synthetic event backfill applies for a listed customer or subscription.
///
/// It is an ordinary snapshot event of the object (`customer.updated`;
/// `customer.subscription.updated`, or `.deleted` for a canceled one, which also records
/// the cancellation in the customer's history), so it goes through the same handler and
/// the same ordering gate as a webhook. Two choices make that safe:
///
/// - **`created` is the list request's time (minus 2 s for clock skew), not a timestamp
///   of the object.** Stripe's list endpoints are read-after-write consistent, so the
///   listed object already includes every change whose event is older than the request.
///   Keyed at that moment, the snapshot replaces stored state from any earlier event
///   (however stale), while an event from after the request still wins, as does a late
///   delivery of one from just before it. An object timestamp (`created`, a period start)
///   would be a lower bound of its last change: a stale row from a later event would then
///   win over the listed object and never be repaired, and a late webhook older than the
///   listing would overwrite it.
/// - **The event id is a hash of the object's content** (`evt_tollgate_backfill_...`).
///   Listing an unchanged object again yields the same id, which the ledger already has:
///   a second run changes nothing. A changed object is a new snapshot, applied once.
///
/// `None` for objects of other kinds.
pub fn snapshot_event(
    object: &serde_json::Value,
    listed_at: SystemTime,
) -> Option<serde_json::Value> {
    let event_type = match object["object"].as_str()? {
        "customer" if object["deleted"] == true => "customer.deleted",
        "customer" => "customer.updated",
        "subscription" if object["status"] == "canceled" => "customer.subscription.deleted",
        "subscription" => "customer.subscription.updated",
        _ => return None,
    };
    let content = serde_json::to_string(object).ok()?;
    let digest = hex::encode(Sha256::digest(
        format!("{event_type}\n{content}").as_bytes(),
    ));
    let listed = listed_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Some(serde_json::json!({
        "id": format!("evt_tollgate_backfill_{}", &digest[..24]),
        "object": "event",
        "type": event_type,
        "created": listed - 2,
        "livemode": object["livemode"].as_bool().unwrap_or(false),
        "api_version": tollgate_stripe::api_version(),
        "data": { "object": object },
    }))
}

/// (id, created) of a listed event.
fn event_position(event: &serde_json::Value) -> Option<(String, i64)> {
    Some((
        event["id"].as_str()?.to_string(),
        event["created"].as_i64()?,
    ))
}

/// Whether Stripe refused a list request because it does not know the cursor.
fn cursor_unknown(error: &StripeApiError) -> bool {
    match error {
        StripeApiError::NotFound(_) => true,
        StripeApiError::Rejected(r) => {
            r.code.as_deref() == Some("resource_missing")
                || r.param.as_deref() == Some("ending_before")
        }
        _ => false,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_cover_every_handled_type_in_groups_stripe_accepts() {
        let streams = Reconciler::streams();
        assert!(streams.iter().all(|(_, t)| t.len() <= TYPES_PER_REQUEST));
        let all: Vec<&str> = streams
            .iter()
            .flat_map(|(_, t)| t.iter().map(String::as_str))
            .collect();
        assert_eq!(all, HANDLED_EVENT_TYPES);
        assert_eq!(streams, Reconciler::streams(), "names are stable");
        assert_ne!(streams[0].0, streams[1].0);
    }

    #[test]
    fn snapshot_events_are_named_by_content_and_keyed_by_the_listing() {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let subscription = serde_json::json!({ "object": "subscription", "id": "sub_1",
            "status": "active", "livemode": true });
        let event = snapshot_event(&subscription, at).unwrap();
        assert_eq!(event["type"], "customer.subscription.updated");
        assert_eq!(event["created"], 1_799_999_998);
        assert_eq!(event["livemode"], true);
        assert_eq!(event["data"]["object"], subscription);
        let later = snapshot_event(&subscription, at + Duration::from_secs(60)).unwrap();
        assert_eq!(event["id"], later["id"], "same object, same event");
        let mut canceled = subscription.clone();
        canceled["status"] = "canceled".into();
        let canceled = snapshot_event(&canceled, at).unwrap();
        assert_eq!(canceled["type"], "customer.subscription.deleted");
        assert_ne!(canceled["id"], event["id"]);
        let customer = serde_json::json!({ "object": "customer", "id": "cus_1" });
        assert_eq!(
            snapshot_event(&customer, at).unwrap()["type"],
            "customer.updated"
        );
        assert!(snapshot_event(&serde_json::json!({ "object": "invoice" }), at).is_none());
        let envelope = EventEnvelope::from_value(&event).unwrap();
        assert!(envelope.id.starts_with("evt_tollgate_backfill_"));
    }
}
