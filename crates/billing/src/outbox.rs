//! The entitlement-change outbox: written in the transaction that changes a
//! customer's access, relayed to `tollgate.entitlements.changes` afterwards.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tollgate_broker::Publisher;
use tollgate_broker::lapin::BasicProperties;
use tollgate_events::topology::ENTITLEMENT_CHANGES_EXCHANGE;
use tollgate_runtime::propagation;
use tracing::{debug, warn};

use crate::customers::Tx;
use crate::process::ProcessError;
use crate::wakeup::Wakeup;

/// Also named in `write`'s SQL.
const CHANNEL: &str = "tollgate_outbox";
/// Only one relay drains at a time, so changes go out in version order.
const RELAY_LOCK: i64 = 0x746f_6c6c_6f75_7462; // "tollgoutb"
const BATCH: i64 = 200;
/// How soon to look again when another replica holds the relay lock.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// An access change to write together with its announcement.
pub struct AccessChange<'a> {
    pub status: &'a str,
    pub tier: &'a str,
    pub previous_status: &'a str,
    pub previous_tier: Option<&'a str>,
    pub trigger_source: &'a str,
    pub stripe_event_id: Option<&'a str>,
}

/// Announces the customer's current entitlement state; call after changing it,
/// inside the same transaction (the customer row is locked).
pub async fn emit(tx: &mut Tx, customer_id: uuid::Uuid, reason: &str) -> Result<(), ProcessError> {
    write(tx, customer_id, reason, None).await
}

/// Sets the customer's access, audits the change and announces it.
pub async fn emit_access(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    change: AccessChange<'_>,
) -> Result<(), ProcessError> {
    write(tx, customer_id, "access", Some(change)).await
}

/// The whole write in one statement: bump the version (and set the access, when it
/// changed), audit, and queue the announcement with the trace context of the span
/// writing it (`$9`, so its publish continues that trace); `$tail` selects the queued row.
macro_rules! write_sql {
    ($tail:literal) => {
        concat!(
            "WITH c AS (
                 UPDATE customers SET access_version = access_version + 1,
                                      access_status = COALESCE($3, access_status),
                                      tier = CASE WHEN $3 IS NULL THEN tier ELSE $4 END,
                                      updated_at = CASE WHEN $3 IS NULL THEN updated_at ELSE now() END
                  WHERE id = $1
              RETURNING id, access_version, user_id, stripe_customer_id, access_status, tier, stripe_features,
                        test_user, deleted_at IS NOT NULL AS deleted),
             audit AS (
                 INSERT INTO access_audit (customer_id, previous_status, new_status, previous_tier, new_tier,
                                           trigger_source, stripe_event_id)
                 SELECT id, $5, access_status, $6, tier, $7, $8 FROM c WHERE $3 IS NOT NULL),
             queued AS (
                 INSERT INTO entitlement_outbox (customer_id, customer_version, reason, traceparent, payload)
                 SELECT id, access_version, $2, $9, jsonb_build_object(
                            'customer_id', id::text, 'customer_version', access_version, 'user_id', user_id,
                            'stripe_customer_id', stripe_customer_id, 'access_status', access_status, 'tier', tier,
                            'stripe_features', to_jsonb(stripe_features), 'test_user', test_user,
                            'deleted', deleted, 'reason', $2::text)
                   FROM c
              RETURNING id)
             ",
            $tail
        )
    };
}

/// This process relays: it wakes its relay after the commit (crate::wakeup).
const WRITE: &str = write_sql!("SELECT id FROM queued");
/// No relay here (the command line): NOTIFY the relays, delivered at commit.
const WRITE_AND_NOTIFY: &str =
    write_sql!("SELECT id FROM queued, LATERAL (SELECT pg_notify('tollgate_outbox', '')) AS woken");

/// One statement (one round trip) for the whole write, and a wake-up for the relay
/// once it commits.
async fn write(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    reason: &str,
    change: Option<AccessChange<'_>>,
) -> Result<(), ProcessError> {
    let sql = if tx.wake_locally_after_commit(CHANNEL) {
        WRITE
    } else {
        WRITE_AND_NOTIFY
    };
    let written: Option<i64> = sqlx::query_scalar(sql)
        .bind(customer_id)
        .bind(reason)
        .bind(change.as_ref().map(|c| c.status))
        .bind(change.as_ref().map(|c| c.tier))
        .bind(change.as_ref().map(|c| c.previous_status))
        .bind(change.as_ref().and_then(|c| c.previous_tier))
        .bind(change.as_ref().map(|c| c.trigger_source))
        .bind(change.as_ref().and_then(|c| c.stripe_event_id))
        .bind(propagation::traceparent(&tracing::Span::current()))
        .fetch_optional(&mut **tx)
        .await?;
    if written.is_none() {
        return Err(ProcessError::Transient(format!(
            "customer {customer_id} vanished while its change was being written"
        )));
    }
    Ok(())
}

/// Publishes unpublished outbox rows until `stop`; woken by this process's commits
/// and by NOTIFY (crate::wakeup), and polling every second as well, so nothing
/// waits on a lost wake-up.
pub async fn relay(pool: PgPool, publisher: Publisher, mut stop: watch::Receiver<bool>) {
    let mut wakeup = Wakeup::new(pool.clone(), CHANNEL, "outbox relay");
    loop {
        if *stop.borrow() {
            return;
        }
        wakeup.listen().await;
        let mut poll = Duration::from_secs(1);
        match drain(&pool, &publisher).await {
            Ok(Drained { published, busy }) => {
                if published > 0 {
                    debug!(published, "outbox relayed");
                }
                // Another replica is relaying and may have looked for rows before
                // ours committed: look again soon rather than at the next poll.
                if busy {
                    poll = BUSY_RETRY;
                }
            }
            Err(e) => warn!(error = %e, "outbox relay failed; retrying"),
        }
        if wakeup.wait(poll, &mut stop).await {
            // Announce what is already committed before leaving.
            let _ = drain(&pool, &publisher).await;
            return;
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Broker(#[from] tollgate_broker::PublishError),
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub published: u64,
    /// Another process held the relay lock.
    pub busy: bool,
}

/// Publishes every unpublished row in id order, unless another process is.
pub async fn drain(pool: &PgPool, publisher: &Publisher) -> Result<Drained, RelayError> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(Drained {
                published: total,
                busy: true,
            });
        }
        let rows: Vec<(i64, serde_json::Value, Option<String>)> = sqlx::query_as(
            "SELECT id, payload, traceparent FROM entitlement_outbox
              WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Drained {
                published: total,
                busy: false,
            });
        }
        // One producer span per row, in the trace of the transaction that wrote it;
        // the message names it, so entitlements continues that trace. The spans end
        // when the confirms are in.
        let spans: Vec<tracing::Span> = rows
            .iter()
            .map(|(version, _, traceparent)| {
                let span = tracing::info_span!(
                    parent: None,
                    "outbox_publish",
                    otel.kind = "producer",
                    otel.status_code = tracing::field::Empty,
                    messaging.system = "rabbitmq",
                    messaging.destination.name = ENTITLEMENT_CHANGES_EXCHANGE,
                    version,
                );
                propagation::continue_trace(&span, traceparent.as_deref());
                span
            })
            .collect();
        let messages = rows
            .iter()
            .zip(&spans)
            .map(|((version, payload, _), span)| {
                let mut body = payload.clone();
                body["version"] = json!(version);
                let properties = BasicProperties::default()
                    .with_message_id(format!("entitlement-{version}").into())
                    .with_type("entitlement.changed".into())
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2);
                (
                    serde_json::to_vec(&body).expect("JSON values serialise"),
                    tollgate_broker::trace::with_traceparent(properties, span),
                )
            })
            .collect();
        // In version order, confirms in flight together. Rows published before a
        // failure are published again later: consumers ignore versions they have seen.
        if let Err(e) = publisher
            .broadcast_in_order(ENTITLEMENT_CHANGES_EXCHANGE, messages)
            .await
        {
            for span in &spans {
                span.record("otel.status_code", "error");
            }
            return Err(e.into());
        }
        drop(spans);
        let ids: Vec<i64> = rows.iter().map(|(id, _, _)| *id).collect();
        sqlx::query("UPDATE entitlement_outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len() as u64;
        metrics::counter!("tollgate_billing_outbox_published_total").increment(ids.len() as u64);
    }
}
