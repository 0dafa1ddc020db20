//! Raw payload retention: after the configured age a `stripe_events` row keeps
//! its summary (id, type, times, status, attempts, error) and loses the body,
//! which may hold personal data and is no longer needed to apply or audit it.
//! The same hourly task forgets checkout attempts older than an hour (the checkout
//! limit's window is far shorter).

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{info, warn};

/// Rows cleared per statement, so the job never holds long locks.
const BATCH: i64 = 1_000;

/// Clears payloads received more than `older_than` ago; returns how many.
pub async fn drop_old_payloads(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    let seconds = older_than.as_secs_f64();
    let mut total = 0;
    loop {
        let cleared = sqlx::query(
            "UPDATE stripe_events SET payload = NULL
              WHERE id IN (SELECT id FROM stripe_events
                            WHERE payload IS NOT NULL
                              AND received_at < now() - make_interval(secs => $1)
                              AND status IN ('processed', 'ignored')
                            LIMIT $2)",
        )
        .bind(seconds)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        total += cleared;
        if cleared < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Checkout attempts are kept this long (any checkout limit's window is shorter).
pub const CHECKOUT_ATTEMPTS_KEPT: Duration = Duration::from_secs(3600);

/// Deletes checkout attempts older than [`CHECKOUT_ATTEMPTS_KEPT`]; returns how many.
pub async fn drop_old_checkout_attempts(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let kept = chrono::Duration::from_std(CHECKOUT_ATTEMPTS_KEPT).unwrap_or(chrono::Duration::MAX);
    crate::checkout_limit::purge(pool, chrono::Utc::now() - kept).await
}

/// Every hour until `stop`: `drop_old_payloads` (unless `payloads_older_than` is `None`:
/// payloads kept forever) and `drop_old_checkout_attempts`.
pub async fn run(
    pool: PgPool,
    payloads_older_than: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Some(older_than) = payloads_older_than {
            match drop_old_payloads(&pool, older_than).await {
                Ok(0) => {}
                Ok(cleared) => info!(cleared, "old event payloads dropped"),
                Err(e) => warn!(error = %e, "payload retention failed; next run in an hour"),
            }
        }
        if let Err(e) = drop_old_checkout_attempts(&pool).await {
            warn!(error = %e, "forgetting old checkout attempts failed; next run in an hour");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
        }
    }
}
