//! `customer.*` snapshots (email, default payment method, deletion, user link)
//! and Stripe Entitlements feature lookup keys.

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use super::lifecycle_rank;
use crate::customers::{self, Source, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::{Customer, EntitlementSummary};

pub async fn customer(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    customer: &Customer,
    source: Source,
) -> Result<Applied, ProcessError> {
    let customer_id = customers::lock_or_create(tx, &customer.id).await?;
    let user_id = customer
        .metadata
        .as_ref()
        .and_then(|m| m.get("user_id"))
        .and_then(|v| v.as_deref())
        .filter(|v| !v.is_empty());
    if user_id.is_some() {
        customers::link_user(tx, customer_id, user_id, None).await?;
    }
    let deleted = envelope.event_type == "customer.deleted";
    sqlx::query(
        "UPDATE customers SET email = COALESCE($2, email), default_payment_method = $3,
                deleted_at = CASE WHEN $4 THEN COALESCE(deleted_at, to_timestamp($5)) ELSE NULL END,
                snapshot_created = $5, snapshot_rank = $6, snapshot_event_id = $7, updated_at = now()
          WHERE id = $1
            AND (snapshot_created IS NULL
                 OR (snapshot_created, snapshot_rank, snapshot_event_id) < ($5, $6, $7::text COLLATE \"C\"))",
    )
    .bind(customer_id)
    .bind(&customer.email)
    .bind(
        customer
            .invoice_settings
            .as_ref()
            .and_then(|s| s.default_payment_method.as_ref())
            .map(|m| m.id()),
    )
    .bind(deleted)
    .bind(envelope.created)
    .bind(lifecycle_rank(&envelope.event_type))
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope, source).await?;
    Ok(Applied::Processed)
}

/// The customer's active Stripe Entitlements feature lookup keys; they grant
/// features beside the tier's.
pub async fn entitlement_summary(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    summary: EntitlementSummary,
) -> Result<Applied, ProcessError> {
    let customer_id = customers::lock_or_create(tx, &summary.customer).await?;
    let mut keys: Vec<String> = summary
        .entitlements
        .data
        .into_iter()
        .map(|e| e.lookup_key)
        .collect();
    keys.sort();
    keys.dedup();
    sqlx::query(
        "UPDATE customers SET stripe_features = $2, features_snapshot_created = $3, features_snapshot_event_id = $4,
                updated_at = now()
          WHERE id = $1
            AND (features_snapshot_created IS NULL
                 OR (features_snapshot_created, features_snapshot_event_id) < ($3, $4::text COLLATE \"C\"))",
    )
    .bind(customer_id)
    .bind(&keys)
    .bind(envelope.created)
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    crate::outbox::emit(tx, customer_id, "features").await?;
    Ok(Applied::Processed)
}
