//! Operator actions on one customer, shared by the admin HTTP API (and any command line):
//! credit adjustments through the credit ledger, and the test-user flag. Each runs in one
//! transaction under the customer's row lock, writes an `access_audit` row
//! (`trigger_source = 'admin_action'`, the admin's id) and announces the change through
//! the entitlement outbox, so entitlements sees it within milliseconds.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::customers::Tx;
use crate::process::ProcessError;

/// Largest credit adjustment accepted at once (either way): a typo guard.
pub const MAX_ADJUSTMENT: i64 = 100_000_000;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("no customer with that user id")]
    NoSuchCustomer,
    #[error("the balance ({balance}) cannot go below zero")]
    InsufficientCredits { balance: i64 },
    #[error("this idempotency key was used for another adjustment")]
    IdempotencyConflict,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Billing(#[from] ProcessError),
}

/// A credit adjustment an operator asks for.
#[derive(Debug, Clone)]
pub struct CreditAdjustment<'a> {
    pub user_id: &'a str,
    /// Credits added (positive) or removed (negative); never zero.
    pub delta: i64,
    /// Why, for the audit log.
    pub reason: &'a str,
    /// The operator's key: the same key applies the adjustment once.
    pub idempotency_key: &'a str,
    pub admin_id: &'a str,
}

/// What an adjustment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjusted {
    /// False when the key was already used for this same adjustment (nothing changed).
    pub applied: bool,
    pub balance: i64,
}

fn check_text(name: &str, value: &str, max: usize) -> Result<(), AdminError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control)
    {
        return Err(AdminError::Invalid(format!(
            "`{name}` must be 1 to {max} characters without control characters"
        )));
    }
    Ok(())
}

/// Locks the user's customer row; its id, access status and tier.
async fn lock_customer(
    tx: &mut Tx,
    user_id: &str,
) -> Result<(uuid::Uuid, String, Option<String>), AdminError> {
    sqlx::query_as(
        "SELECT id, access_status, tier FROM customers
          WHERE user_id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE",
    )
    .bind(user_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(AdminError::NoSuchCustomer)
}

/// An audit row for an operator's action that leaves access status and tier as they are.
async fn audit(
    tx: &mut Tx,
    customer: (uuid::Uuid, &str, Option<&str>),
    admin_id: &str,
    notes: &str,
) -> Result<(), AdminError> {
    sqlx::query(
        "INSERT INTO access_audit (customer_id, previous_status, new_status, previous_tier, new_tier,
                                   trigger_source, admin_id, notes)
         VALUES ($1, $2, $2, $3, $3, 'admin_action', $4, $5)",
    )
    .bind(customer.0)
    .bind(customer.1)
    .bind(customer.2)
    .bind(admin_id)
    .bind(notes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn balance(tx: &mut Tx, customer_id: uuid::Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COALESCE((SELECT balance FROM credit_balances WHERE customer_id = $1), 0)",
    )
    .bind(customer_id)
    .fetch_one(&mut **tx)
    .await
}

/// Adds `delta` credits (an `admin_adjustment` ledger row keyed `admin:<key>`), once per
/// key. A removal that would take the balance below zero is refused.
pub async fn adjust_credits(
    pool: &PgPool,
    adjustment: CreditAdjustment<'_>,
) -> Result<Adjusted, AdminError> {
    if adjustment.delta == 0 || adjustment.delta.abs() > MAX_ADJUSTMENT {
        return Err(AdminError::Invalid(format!(
            "`delta` must be a non-zero number of credits between -{MAX_ADJUSTMENT} and {MAX_ADJUSTMENT}"
        )));
    }
    check_text("reason", adjustment.reason, 500)?;
    check_text("idempotency_key", adjustment.idempotency_key, 200)?;
    let key = format!("admin:{}", adjustment.idempotency_key);
    let mut tx = crate::db::Tx::begin(pool).await?;
    let (customer_id, status, tier) = lock_customer(&mut tx, adjustment.user_id).await?;
    let previous: Option<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT customer_id, delta FROM credit_ledger WHERE idempotency_key = $1")
            .bind(&key)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(previous) = previous {
        if previous != (customer_id, adjustment.delta) {
            return Err(AdminError::IdempotencyConflict);
        }
        let balance = balance(&mut tx, customer_id).await?;
        return Ok(Adjusted {
            applied: false,
            balance,
        });
    }
    let current = balance(&mut tx, customer_id).await?;
    if current + adjustment.delta < 0 {
        return Err(AdminError::InsufficientCredits { balance: current });
    }
    crate::handlers::credits::add_entry(
        &mut tx,
        customer_id,
        adjustment.delta,
        "admin_adjustment",
        &key,
        None,
        None,
        None,
    )
    .await?;
    audit(
        &mut tx,
        (customer_id, &status, tier.as_deref()),
        adjustment.admin_id,
        &format!(
            "credits {:+} (key {}): {}",
            adjustment.delta, adjustment.idempotency_key, adjustment.reason
        ),
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        %customer_id,
        delta = adjustment.delta,
        admin = adjustment.admin_id,
        "credits adjusted by an admin"
    );
    Ok(Adjusted {
        applied: true,
        balance: current + adjustment.delta,
    })
}

/// The test-user flag on a customer: full access without paying (entitlements reads it)
/// until `until`, or until unflagged.
#[derive(Debug, Clone)]
pub struct TestUserFlag<'a> {
    pub user_id: &'a str,
    pub reason: &'a str,
    pub until: Option<DateTime<Utc>>,
    pub admin_id: &'a str,
}

/// Flags the customer as a test user (or updates the flag's reason and expiry). Returns
/// whether anything changed.
pub async fn flag_test_user(
    pool: &PgPool,
    flag: TestUserFlag<'_>,
    now: DateTime<Utc>,
) -> Result<bool, AdminError> {
    check_text("reason", flag.reason, 500)?;
    if flag.until.is_some_and(|until| until <= now) {
        return Err(AdminError::Invalid("`until` is in the past".into()));
    }
    let mut tx = crate::db::Tx::begin(pool).await?;
    let (customer_id, status, tier) = lock_customer(&mut tx, flag.user_id).await?;
    let changed = sqlx::query(
        "UPDATE customers SET test_user = true, test_user_by = $2, test_user_reason = $3,
                              test_user_until = $4, updated_at = now()
          WHERE id = $1 AND NOT (test_user AND test_user_until IS NOT DISTINCT FROM $4
                                 AND test_user_reason IS NOT DISTINCT FROM $3)",
    )
    .bind(customer_id)
    .bind(flag.admin_id)
    .bind(flag.reason)
    .bind(flag.until)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        let until = flag.until.map_or_else(
            || "no expiry".to_string(),
            |u| format!("until {}", u.to_rfc3339()),
        );
        audit(
            &mut tx,
            (customer_id, &status, tier.as_deref()),
            flag.admin_id,
            &format!("test user flagged ({until}): {}", flag.reason),
        )
        .await?;
        crate::outbox::emit(&mut tx, customer_id, "test_user").await?;
    }
    tx.commit().await?;
    if changed {
        tracing::info!(%customer_id, admin = flag.admin_id, "test user flagged by an admin");
    }
    Ok(changed)
}

/// Removes the test-user flag. Returns whether the customer was flagged.
pub async fn unflag_test_user(
    pool: &PgPool,
    user_id: &str,
    reason: &str,
    admin_id: &str,
) -> Result<bool, AdminError> {
    check_text("reason", reason, 500)?;
    let mut tx = crate::db::Tx::begin(pool).await?;
    let (customer_id, status, tier) = lock_customer(&mut tx, user_id).await?;
    let changed = sqlx::query(
        "UPDATE customers SET test_user = false, test_user_by = $2, test_user_reason = $3,
                              test_user_until = NULL, updated_at = now()
          WHERE id = $1 AND test_user",
    )
    .bind(customer_id)
    .bind(admin_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if changed {
        audit(
            &mut tx,
            (customer_id, &status, tier.as_deref()),
            admin_id,
            &format!("test user unflagged: {reason}"),
        )
        .await?;
        crate::outbox::emit(&mut tx, customer_id, "test_user").await?;
    }
    tx.commit().await?;
    if changed {
        tracing::info!(%customer_id, admin = admin_id, "test user unflagged by an admin");
    }
    Ok(changed)
}
