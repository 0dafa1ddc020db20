//! Raw payload retention: after the configured age a `stripe_events` row keeps
//! its summary (id, type, times, status, attempts, error) and loses the body,
//! which may hold personal data and is no longer needed to apply or audit it.

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

/// Runs `drop_old_payloads` every hour until `stop`.
pub async fn run(pool: PgPool, older_than: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        match drop_old_payloads(&pool, older_than).await {
            Ok(0) => {}
            Ok(cleared) => info!(cleared, "old event payloads dropped"),
            Err(e) => warn!(error = %e, "payload retention failed; next run in an hour"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
        }
    }
}
