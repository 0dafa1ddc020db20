//! Reads from billing's PostgreSQL schema (billing owns it and its migrations).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::model::{ChangeMessage, CustomerState, Subject};

const STATE_COLUMNS: &str =
    "id, access_version, user_id, lower(email) AS email, access_status, tier, stripe_features,
     test_user, test_user_until, deleted_at IS NOT NULL AS deleted";

#[derive(sqlx::FromRow)]
struct StateRow {
    id: Uuid,
    access_version: i64,
    user_id: Option<String>,
    email: Option<String>,
    access_status: String,
    tier: Option<String>,
    stripe_features: Vec<String>,
    test_user: bool,
    test_user_until: Option<DateTime<Utc>>,
    deleted: bool,
}

impl From<StateRow> for CustomerState {
    fn from(row: StateRow) -> Self {
        Self {
            customer_id: row.id,
            customer_version: row.access_version,
            user_id: row.user_id,
            email: row.email,
            access_status: row.access_status,
            tier: row.tier,
            stripe_features: row.stripe_features,
            test_user: row.test_user,
            test_user_until: row.test_user_until,
            deleted: row.deleted,
        }
    }
}

/// Every customer the subject names (a user id names at most one; an email may
/// name several Stripe customers).
pub async fn customers_of(
    pool: &PgPool,
    subject: &Subject,
) -> Result<Vec<CustomerState>, sqlx::Error> {
    let rows: Vec<StateRow> =
        match subject {
            Subject::UserId(id) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {STATE_COLUMNS} FROM customers WHERE user_id = $1"
                )))
                .bind(id)
                .fetch_all(pool)
                .await?
            }
            Subject::Email(email) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT {STATE_COLUMNS} FROM customers WHERE lower(email) = $1 ORDER BY id LIMIT 20"
            )))
            .bind(email)
            .fetch_all(pool)
            .await?,
        };
    Ok(rows.into_iter().map(Into::into).collect())
}

pub async fn customers_by_id(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<CustomerState>, sqlx::Error> {
    let rows: Vec<StateRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM customers WHERE id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

fn change(id: i64, payload: serde_json::Value) -> Option<ChangeMessage> {
    match serde_json::from_value::<ChangeMessage>(payload) {
        Ok(mut change) => {
            change.version = id;
            Some(change)
        }
        Err(e) => {
            tracing::error!(version = id, error = %e, "outbox row is not a change message; skipped");
            None
        }
    }
}

/// Committed changes after `after`, in version order.
pub async fn changes_after(
    pool: &PgPool,
    after: i64,
    up_to: Option<i64>,
    limit: i64,
) -> Result<Vec<ChangeMessage>, sqlx::Error> {
    let rows: Vec<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT id, payload FROM entitlement_outbox WHERE id > $1 AND ($2::bigint IS NULL OR id <= $2)
          ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, p)| change(id, p))
        .collect())
}

/// The committed changes among `ids`.
pub async fn changes_with_ids(
    pool: &PgPool,
    ids: &[i64],
) -> Result<Vec<ChangeMessage>, sqlx::Error> {
    let rows: Vec<(i64, serde_json::Value)> =
        sqlx::query_as("SELECT id, payload FROM entitlement_outbox WHERE id = ANY($1) ORDER BY id")
            .bind(ids)
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, p)| change(id, p))
        .collect())
}

pub async fn latest_version(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM entitlement_outbox")
        .fetch_one(pool)
        .await
}

/// The subscription that decides access, summarised for people.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub stripe_subscription_id: String,
    pub status: String,
    pub price_id: Option<String>,
    pub tier: String,
    pub plan: Option<String>,
    pub billing_interval: Option<String>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub cancel_at_period_end: bool,
    pub ended_at: Option<DateTime<Utc>>,
    pub latest_invoice_status: Option<String>,
    pub latest_invoice_attempted: Option<bool>,
    pub last_paid_at: Option<DateTime<Utc>>,
}

pub async fn subscription(
    pool: &PgPool,
    customer_id: Uuid,
) -> Result<Option<SubscriptionRow>, sqlx::Error> {
    // Live subscriptions first, then the most recent.
    sqlx::query_as(
        "SELECT s.stripe_subscription_id, s.status, s.price_id, s.tier, s.plan, s.billing_interval,
                s.current_period_end, s.cancel_at_period_end, s.ended_at,
                li.status AS latest_invoice_status, li.attempted AS latest_invoice_attempted,
                (SELECT max(p.paid_at) FROM invoices p
                  WHERE p.stripe_subscription_id = s.stripe_subscription_id AND p.status = 'paid') AS last_paid_at
           FROM customers c
           JOIN subscriptions s ON s.stripe_customer_id = c.stripe_customer_id
           LEFT JOIN LATERAL (SELECT i.status, i.attempted FROM invoices i
                               WHERE i.stripe_subscription_id = s.stripe_subscription_id
                               ORDER BY i.invoice_created DESC LIMIT 1) li ON true
          WHERE c.id = $1
          ORDER BY (s.status IN ('active', 'trialing')) DESC, s.snapshot_created DESC
          LIMIT 1",
    )
    .bind(customer_id)
    .fetch_optional(pool)
    .await
}

pub async fn credit_balance(pool: &PgPool, customer_id: Uuid) -> Result<i64, sqlx::Error> {
    Ok(
        sqlx::query_scalar("SELECT balance FROM credit_balances WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or(0),
    )
}
