//! The entitlement-change outbox: written in the transaction that changes a
//! customer's access, relayed to `tollgate.entitlements.changes` afterwards.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use tollgate_broker::Publisher;
use tollgate_broker::lapin::BasicProperties;
use tollgate_events::topology::ENTITLEMENT_CHANGES_EXCHANGE;
use tracing::{debug, warn};

use crate::customers::Tx;
use crate::process::ProcessError;
use crate::wakeup::Wakeup;

const CHANNEL: &str = "tollgate_outbox";
/// Only one relay drains at a time, so changes go out in version order.
const RELAY_LOCK: i64 = 0x746f_6c6c_6f75_7462; // "tollgoutb"
const BATCH: i64 = 200;

#[derive(sqlx::FromRow)]
struct CustomerState {
    access_version: i64,
    user_id: Option<String>,
    stripe_customer_id: Option<String>,
    access_status: String,
    tier: Option<String>,
    stripe_features: Vec<String>,
    test_user: bool,
    deleted: bool,
}

/// Announces the customer's current entitlement state; call after changing it,
/// inside the same transaction (the customer row is locked).
pub async fn emit(tx: &mut Tx, customer_id: uuid::Uuid, reason: &str) -> Result<(), ProcessError> {
    let state: CustomerState = sqlx::query_as(
        "UPDATE customers SET access_version = access_version + 1 WHERE id = $1
         RETURNING access_version, user_id, stripe_customer_id, access_status, tier, stripe_features, test_user,
                   deleted_at IS NOT NULL AS deleted",
    )
    .bind(customer_id)
    .fetch_one(&mut **tx)
    .await?;
    let payload = json!({
        "customer_id": customer_id.to_string(),
        "customer_version": state.access_version,
        "user_id": state.user_id,
        "stripe_customer_id": state.stripe_customer_id,
        "access_status": state.access_status,
        "tier": state.tier,
        "stripe_features": state.stripe_features,
        "test_user": state.test_user,
        "deleted": state.deleted,
        "reason": reason,
    });
    sqlx::query("INSERT INTO entitlement_outbox (customer_id, customer_version, reason, payload) VALUES ($1, $2, $3, $4)")
        .bind(customer_id)
        .bind(state.access_version)
        .bind(reason)
        .bind(&payload)
        .execute(&mut **tx)
        .await?;
    // Delivered at commit, and only then: wakes the relay at once.
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(CHANNEL)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Publishes unpublished outbox rows until `stop`; woken by NOTIFY, and polling
/// every second as well, so nothing waits on a lost notification.
pub async fn relay(pool: PgPool, publisher: Publisher, mut stop: watch::Receiver<bool>) {
    let mut wakeup = Wakeup::new(pool.clone(), CHANNEL, "outbox relay");
    loop {
        if *stop.borrow() {
            return;
        }
        wakeup.listen().await;
        match drain(&pool, &publisher).await {
            Ok(0) => {}
            Ok(n) => debug!(published = n, "outbox relayed"),
            Err(e) => warn!(error = %e, "outbox relay failed; retrying"),
        }
        if wakeup.wait(Duration::from_secs(1), &mut stop).await {
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

/// Publishes every unpublished row in id order; returns how many.
pub async fn drain(pool: &PgPool, publisher: &Publisher) -> Result<u64, RelayError> {
    let mut total = 0;
    loop {
        let mut tx = pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            // Another process is relaying.
            return Ok(total);
        }
        let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT id, payload FROM entitlement_outbox WHERE published_at IS NULL ORDER BY id LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(total);
        }
        for (version, payload) in &rows {
            let mut body = payload.clone();
            body["version"] = json!(version);
            let properties = BasicProperties::default()
                .with_message_id(format!("entitlement-{version}").into())
                .with_type("entitlement.changed".into())
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let bytes = serde_json::to_vec(&body).expect("JSON values serialise");
            // Rows published before a failure are published again later: consumers
            // ignore versions they have seen.
            publisher
                .broadcast(ENTITLEMENT_CHANGES_EXCHANGE, "", &bytes, properties)
                .await?;
        }
        let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
        sqlx::query("UPDATE entitlement_outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        total += ids.len() as u64;
        metrics::counter!("tollgate_billing_outbox_published_total").increment(ids.len() as u64);
    }
}
