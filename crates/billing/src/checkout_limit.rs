//! At most N checkout sessions per user in any window (5 a minute by default), across
//! every process that creates them.
//!
//! PostgreSQL rather than Redis: a checkout reads the customer from PostgreSQL anyway, so
//! the limit adds no store whose outage could block sales, billing does not otherwise use
//! Redis, and checkouts are human clicks (a few a second at most), far below what a short
//! transaction per click costs. The window slides: each allowed request is a row
//! (`checkout_attempts`), and a request is allowed while fewer than N rows fall in the
//! window before it, so no burst at a minute boundary can double the limit. A
//! transaction-scoped advisory lock per user serialises one user's checks across replicas
//! (two concurrent sixth requests cannot both pass); different users never wait on each
//! other except on a hash collision of their lock keys.
//!
//! The time is the caller's (`now`), so tests decide it; services pass the wall clock.
//! Clocks of replicas a few hundred milliseconds apart shift the window by as much.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// N requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckoutLimit {
    pub max: u32,
    pub window: Duration,
}

impl Default for CheckoutLimit {
    fn default() -> Self {
        Self {
            max: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// Takes one of the user's slots at `now`, or says how long until one frees up.
pub async fn acquire(
    pool: &PgPool,
    user_id: &str,
    now: DateTime<Utc>,
    limit: CheckoutLimit,
) -> Result<Result<(), Duration>, sqlx::Error> {
    let window = chrono::Duration::from_std(limit.window).unwrap_or(chrono::Duration::MAX);
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('tollgate.checkout:' || $1, 0))")
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let (count, oldest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH expired AS (DELETE FROM checkout_attempts WHERE user_id = $1 AND attempted_at <= $2)
         SELECT count(*), min(attempted_at) FROM checkout_attempts
          WHERE user_id = $1 AND attempted_at > $2",
    )
    .bind(user_id)
    .bind(now - window)
    .fetch_one(&mut *tx)
    .await?;
    if count >= i64::from(limit.max) {
        tx.commit().await?;
        let frees_at = oldest.map_or(now, |oldest| oldest + window);
        let wait = (frees_at - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        return Ok(Err(wait));
    }
    sqlx::query("INSERT INTO checkout_attempts (user_id, attempted_at) VALUES ($1, $2)")
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(()))
}

/// Deletes every user's attempts older than `before` (users who did not come back);
/// returns how many.
pub async fn purge(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM checkout_attempts WHERE attempted_at < $1")
            .bind(before)
            .execute(pool)
            .await?
            .rows_affected(),
    )
}
