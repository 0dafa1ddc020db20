//! Gauges read from the stores every few seconds rather than counted in handlers:
//! active subscriptions by tier (PostgreSQL: right whatever order events arrived in
//! and across restarts) and the depth of billing's queues (a passive declare on
//! RabbitMQ, which answers with the queue's ready-message and consumer counts).
//!
//! Every billing replica exports the same values; dashboards take `max`, not `sum`.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tollgate_broker::lapin;
use tollgate_broker::lapin::options::QueueDeclareOptions;
use tollgate_broker::lapin::types::FieldTable;
use tollgate_events::topology;
use tracing::debug;

/// Statuses that grant a subscription's tier (docs/billing-state.md).
const ACTIVE_STATUSES: &[&str] = &["active", "trialing"];

/// Refreshes every `interval` until `stop`.
pub async fn run(
    pool: PgPool,
    amqp_url: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tiers_seen = BTreeSet::new();
    let mut broker: Option<(lapin::Connection, lapin::Channel)> = None;
    loop {
        if let Err(e) = refresh_subscriptions(&pool, &mut tiers_seen).await {
            debug!(error = %e, "active subscriptions gauge not refreshed");
        }
        if let Err(e) = refresh_queues(&amqp_url, &mut broker).await {
            debug!(error = %e, "queue depth gauges not refreshed");
            // A failed declare closes the channel: start over next time.
            if let Some((connection, _)) = broker.take() {
                let _ = connection.close(200, "reconnecting".into()).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some((connection, _)) = broker {
        let _ = connection.close(200, "billing stopping".into()).await;
    }
}

async fn refresh_subscriptions(
    pool: &PgPool,
    tiers_seen: &mut BTreeSet<String>,
) -> Result<(), sqlx::Error> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tier, count(*) FROM subscriptions WHERE status = ANY($1) GROUP BY tier",
    )
    .bind(ACTIVE_STATUSES)
    .fetch_all(pool)
    .await?;
    // A tier whose last subscription ended reads 0, not its last count.
    for tier in tiers_seen.iter() {
        if !counts.iter().any(|(t, _)| t == tier) {
            metrics::gauge!("tollgate_billing_active_subscriptions", "tier" => tier.clone())
                .set(0.0);
        }
    }
    for (tier, count) in counts {
        metrics::gauge!("tollgate_billing_active_subscriptions", "tier" => tier.clone())
            .set(count as f64);
        tiers_seen.insert(tier);
    }
    Ok(())
}

async fn refresh_queues(
    amqp_url: &str,
    broker: &mut Option<(lapin::Connection, lapin::Channel)>,
) -> Result<(), lapin::Error> {
    if broker.is_none() {
        let connection = tollgate_broker::connect(amqp_url, "tollgate-billing-gauges").await?;
        let channel = connection.create_channel().await?;
        *broker = Some((connection, channel));
    }
    let (_, channel) = broker.as_ref().expect("connected above");
    for queue in [topology::BILLING_QUEUE, topology::DEAD_LETTER_QUEUE] {
        // Passive: only reads the counts; fails (and creates nothing) if it is missing.
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        metrics::gauge!("tollgate_billing_queue_messages", "queue" => queue)
            .set(f64::from(declared.message_count()));
        metrics::gauge!("tollgate_billing_queue_consumers", "queue" => queue)
            .set(f64::from(declared.consumer_count()));
    }
    Ok(())
}
