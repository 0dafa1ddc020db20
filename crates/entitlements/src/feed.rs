//! Keeping the cache current: billing's change feed (each replica binds an
//! exclusive, auto-deleted queue to the `tollgate.entitlements.changes` fanout),
//! with PostgreSQL's outbox table as the source of truth behind it:
//! - after (re)binding the queue, the replica reads every change committed since
//!   the last one it saw from the outbox (a reconnect resyncs, it never trusts a
//!   gap);
//! - versions missing from the feed are looked up in the outbox (`tracker`);
//! - while the broker is unreachable the outbox is polled instead;
//! - while neither the broker nor PostgreSQL confirms freshness, answers are
//!   degraded (each feature's when_unavailable) rather than possibly stale grants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use parking_lot::Mutex;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc, watch};
use tollgate_broker::lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use tollgate_broker::lapin::types::FieldTable;
use tollgate_broker::lapin::{self, ExchangeKind};
use tollgate_events::topology::ENTITLEMENT_CHANGES_EXCHANGE;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::cache::{Applied, Cache};
use crate::model::ChangeMessage;
use crate::store;
use crate::tracker::{Received, Tracker};

const PAGE: i64 = 1000;
/// A version missing this long is looked up in PostgreSQL (out-of-order commits
/// usually arrive within a few milliseconds).
const LOOKUP_AFTER: Duration = Duration::from_millis(30);

struct Versions {
    started: bool,
    tracker: Tracker,
}

pub struct Feed {
    pool: PgPool,
    cache: Arc<Cache>,
    versions: Mutex<Versions>,
    /// Changes in version order (Watch).
    changes: broadcast::Sender<Arc<ChangeMessage>>,
    /// The watermark, for callers waiting on a version.
    applied: watch::Sender<i64>,
    feed_up: AtomicBool,
    last_poll: Mutex<Option<Instant>>,
    reload: mpsc::UnboundedSender<Uuid>,
    gap_timeout: Duration,
    poll_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("version {wanted} is not applied yet (this replica has applied up to {applied})")]
    NotYet { wanted: i64, applied: i64 },
    #[error("cannot confirm version {wanted}: {source}")]
    Unavailable {
        wanted: i64,
        #[source]
        source: sqlx::Error,
    },
}

impl Feed {
    pub fn new(
        pool: PgPool,
        cache: Arc<Cache>,
        gap_timeout: Duration,
        poll_interval: Duration,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<Uuid>) {
        let (reload, reload_rx) = mpsc::unbounded_channel();
        let feed = Arc::new(Self {
            pool,
            cache,
            versions: Mutex::new(Versions {
                started: false,
                tracker: Tracker::default(),
            }),
            changes: broadcast::channel(4096).0,
            applied: watch::channel(0).0,
            feed_up: AtomicBool::new(false),
            last_poll: Mutex::new(None),
            reload,
            gap_timeout,
            poll_interval,
        });
        (feed, reload_rx)
    }

    /// Whether cached answers can be trusted: the broker feed is live (and was
    /// caught up from PostgreSQL), or PostgreSQL was polled moments ago.
    pub fn is_fresh(&self) -> bool {
        if self.feed_up.load(Ordering::Acquire) {
            return true;
        }
        let window = (self.poll_interval * 5).max(Duration::from_secs(1));
        self.last_poll
            .lock()
            .is_some_and(|at| at.elapsed() < window)
    }

    pub fn is_live(&self) -> bool {
        self.feed_up.load(Ordering::Acquire)
    }

    /// Every version up to this one is applied.
    pub fn watermark(&self) -> i64 {
        self.versions.lock().tracker.watermark()
    }

    /// A receiver of in-order changes after the returned watermark.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<ChangeMessage>>, i64) {
        let versions = self.versions.lock();
        (self.changes.subscribe(), versions.tracker.watermark())
    }

    async fn ensure_started(&self) -> Result<(), sqlx::Error> {
        if self.versions.lock().started {
            return Ok(());
        }
        let latest = store::latest_version(&self.pool).await?;
        let mut versions = self.versions.lock();
        if !versions.started {
            versions.tracker = Tracker::starting_at(latest);
            versions.started = true;
            self.applied.send_replace(latest);
            info!(version = latest, "change feed starts at version");
        }
        Ok(())
    }

    /// Applies one change (from the broker or the outbox), then streams whatever is
    /// now in order. Held under one lock so the watermark never passes a change
    /// that is not in the cache yet.
    pub fn handle(&self, change: ChangeMessage) {
        let change = Arc::new(change);
        let mut versions = self.versions.lock();
        if !versions.started {
            // Before the start point is known every change is simply applied.
            self.apply(&change);
            return;
        }
        match versions.tracker.receive(change.clone()) {
            Received::Duplicate => {}
            Received::Late => self.apply(&change),
            Received::New => {
                self.apply(&change);
                self.publish_ready(&mut versions);
            }
        }
    }

    fn apply(&self, change: &ChangeMessage) {
        let applied = self.cache.apply(change);
        let outcome = match applied {
            Applied::Updated => "updated",
            Applied::Inserted => "inserted",
            Applied::Stale => "stale",
        };
        metrics::counter!("tollgate_entitlements_changes_total", "outcome" => outcome).increment(1);
        // On the feed's span when the broker delivered it (no-op otherwise).
        tracing::Span::current().record("outcome", outcome);
        if applied == Applied::Inserted || (applied == Applied::Updated && change.test_user) {
            // Messages carry no email or test-user expiry: read them.
            let _ = self.reload.send(change.customer_id);
        }
    }

    fn publish_ready(&self, versions: &mut Versions) {
        let ready = versions.tracker.advance();
        if ready.is_empty() {
            return;
        }
        for change in ready {
            // No receivers is fine.
            let _ = self.changes.send(change);
        }
        self.applied.send_replace(versions.tracker.watermark());
    }

    /// Reads every change committed after the highest version seen, and the
    /// versions still missing below it.
    pub async fn catch_up(&self, up_to: Option<i64>) -> Result<(), sqlx::Error> {
        self.ensure_started().await?;
        loop {
            let high = self.versions.lock().tracker.high();
            let changes = store::changes_after(&self.pool, high, up_to, PAGE).await?;
            let n = changes.len() as i64;
            for change in changes {
                self.handle(change);
            }
            if n < PAGE {
                break;
            }
        }
        let missing = {
            let versions = self.versions.lock();
            versions.tracker.missing_up_to(up_to.unwrap_or(i64::MAX))
        };
        if !missing.is_empty() {
            for change in store::changes_with_ids(&self.pool, &missing).await? {
                self.handle(change);
            }
        }
        Ok(())
    }

    /// Waits until everything up to `version` is applied, reading PostgreSQL
    /// rather than waiting for the broker. Once the outbox has been read after the
    /// call began and `version` itself is applied, versions still missing below
    /// it were not committed when the caller saw `version`, so the answer is as
    /// fresh as asked.
    pub async fn wait_for(&self, version: i64, deadline: Instant) -> Result<(), WaitError> {
        let mut applied = self.applied.subscribe();
        loop {
            if self.watermark() >= version {
                return Ok(());
            }
            match self.catch_up(Some(version)).await {
                Ok(()) => {
                    if self.versions.lock().tracker.high() >= version {
                        return Ok(());
                    }
                }
                Err(source) => {
                    if Instant::now() >= deadline {
                        return Err(WaitError::Unavailable {
                            wanted: version,
                            source,
                        });
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::NotYet {
                    wanted: version,
                    applied: self.watermark(),
                });
            }
            let pause = (deadline - now).min(Duration::from_millis(25));
            let _ = tokio::time::timeout(pause, applied.changed()).await;
        }
    }

    /// Consumes the broker feed until `stop`, reconnecting; polls the outbox
    /// while the broker is away.
    pub async fn run(self: Arc<Self>, amqp_url: String, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match subscribe(&amqp_url).await {
                Ok((connection, mut consumer)) => {
                    info!("change feed bound");
                    let mut caught_up = false;
                    let mut warned = None;
                    let mut tick = tokio::time::interval(self.poll_interval);
                    loop {
                        if !caught_up {
                            match self.catch_up(None).await {
                                Ok(()) => {
                                    caught_up = true;
                                    self.feed_up.store(true, Ordering::Release);
                                    info!(version = self.watermark(), "change feed live");
                                }
                                Err(e) => {
                                    // Once every 10 s, not at every poll.
                                    if warned.is_none_or(|at: Instant| {
                                        at.elapsed() > Duration::from_secs(10)
                                    }) {
                                        warn!(error = %e, "cannot catch up from the outbox; answers degraded until it can");
                                        warned = Some(Instant::now());
                                    } else {
                                        debug!(error = %e, "cannot catch up from the outbox");
                                    }
                                }
                            }
                        }
                        tokio::select! {
                            delivery = consumer.next() => match delivery {
                                Some(Ok(delivery)) => match serde_json::from_slice::<ChangeMessage>(&delivery.data) {
                                    Ok(change) => {
                                        // The last hop of the webhook's trace: a child of
                                        // billing's outbox publish (the message's traceparent).
                                        let span = tracing::info_span!(
                                            parent: None,
                                            "entitlements_invalidate",
                                            otel.kind = "consumer",
                                            messaging.system = "rabbitmq",
                                            messaging.destination.name = ENTITLEMENT_CHANGES_EXCHANGE,
                                            version = change.version,
                                            customer_id = %change.customer_id,
                                            outcome = tracing::field::Empty,
                                        );
                                        tollgate_broker::trace::continue_from(&span, &delivery.properties);
                                        span.in_scope(|| self.handle(change));
                                    }
                                    Err(e) => warn!(error = %e, "change message not understood; skipped"),
                                },
                                Some(Err(e)) => { warn!(error = %e, "change feed failed"); break; }
                                None => { warn!("change feed closed"); break; }
                            },
                            _ = tick.tick() => {}
                            _ = stop.changed() => {
                                self.feed_up.store(false, Ordering::Release);
                                let _ = connection.close(200, "shutting down".into()).await;
                                return;
                            }
                        }
                    }
                    self.feed_up.store(false, Ordering::Release);
                    let _ = connection.close(200, "reconnecting".into()).await;
                }
                Err(e) => warn!(error = %e, "cannot bind the change feed; polling the outbox"),
            }
            // Until the next attempt, PostgreSQL's outbox is the feed.
            let retry_at = Instant::now() + Duration::from_secs(1);
            while Instant::now() < retry_at {
                match self.catch_up(None).await {
                    Ok(()) => *self.last_poll.lock() = Some(Instant::now()),
                    Err(e) => debug!(error = %e, "outbox poll failed"),
                }
                tokio::select! {
                    () = tokio::time::sleep(self.poll_interval) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    }

    /// Looks missing versions up in PostgreSQL and declares long-absent ones holes.
    pub async fn resolve_gaps(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop.changed() => return,
            }
            let missing = self
                .versions
                .lock()
                .tracker
                .missing_older_than(LOOKUP_AFTER, 1000);
            if missing.is_empty() {
                continue;
            }
            match store::changes_with_ids(&self.pool, &missing).await {
                Ok(found) => {
                    let found_ids: Vec<i64> = found.iter().map(|c| c.version).collect();
                    if !found.is_empty() {
                        metrics::counter!("tollgate_entitlements_gaps_filled_total")
                            .increment(found.len() as u64);
                        debug!(versions = ?found_ids, "missing versions read from the outbox");
                    }
                    for change in found {
                        self.handle(change);
                    }
                    let absent: Vec<i64> = missing
                        .into_iter()
                        .filter(|v| !found_ids.contains(v))
                        .collect();
                    let mut versions = self.versions.lock();
                    if versions.tracker.expire_holes(&absent, self.gap_timeout) > 0 {
                        self.publish_ready(&mut versions);
                    }
                }
                Err(e) => debug!(error = %e, "cannot look missing versions up"),
            }
        }
    }

    /// Reads customers the feed announced without an email (new to this replica).
    pub async fn reload_customers(self: Arc<Self>, mut ids: mpsc::UnboundedReceiver<Uuid>) {
        let mut batch = Vec::new();
        while ids.recv_many(&mut batch, 500).await > 0 {
            match store::customers_by_id(&self.pool, &batch).await {
                Ok(states) => {
                    for state in states {
                        self.cache.insert_by_id(state);
                    }
                }
                Err(e) => {
                    debug!(error = %e, count = batch.len(), "cannot reload announced customers")
                }
            }
            batch.clear();
        }
    }
}

/// An exclusive, auto-deleted queue of this replica's own, bound to the fanout.
async fn subscribe(url: &str) -> Result<(lapin::Connection, lapin::Consumer), lapin::Error> {
    let connection = tollgate_broker::connect(url, "tollgate-entitlements").await?;
    let channel = connection.create_channel().await?;
    channel
        .exchange_declare(
            ENTITLEMENT_CHANGES_EXCHANGE.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
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
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            ENTITLEMENT_CHANGES_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "entitlements".into(),
            BasicConsumeOptions {
                // The queue dies with the connection anyway; a resync covers it.
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((connection, consumer))
}
