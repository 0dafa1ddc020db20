//! `payment_method.*` and `customer.*` snapshots, and Stripe entitlement features.

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::{self, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::{self, Customer, EntitlementSummary, PaymentMethod};

fn lifecycle_rank(event_type: &str) -> i32 {
    match event_type {
        t if t.ends_with(".created") => 0,
        t if t.ends_with(".attached") => 1,
        t if t.ends_with(".deleted") || t.ends_with(".detached") => 3,
        _ => 2,
    }
}

pub async fn payment_method(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let method: PaymentMethod = stripe::object(payload)?;
    let detached = envelope.event_type == "payment_method.detached";
    // A detached method no longer names its customer; the event's previous_attributes do.
    let customer = method
        .customer
        .as_ref()
        .map(|c| c.id().to_string())
        .or_else(|| {
            payload
                .pointer("/data/previous_attributes/customer")
                .and_then(|c| c.as_str())
                .map(str::to_string)
        });
    let Some(customer) = customer else {
        return Ok(Applied::Ignored);
    };
    customers::lock_or_create(tx, &customer).await?;
    let card = method.card.as_ref();
    sqlx::query(
        "INSERT INTO payment_methods (stripe_payment_method_id, stripe_customer_id, type, brand, last4, exp_month, exp_year,
                                      attached, snapshot_created, snapshot_rank, snapshot_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (stripe_payment_method_id) DO UPDATE SET
             stripe_customer_id = EXCLUDED.stripe_customer_id, type = EXCLUDED.type, brand = EXCLUDED.brand,
             last4 = EXCLUDED.last4, exp_month = EXCLUDED.exp_month, exp_year = EXCLUDED.exp_year,
             attached = EXCLUDED.attached, snapshot_created = EXCLUDED.snapshot_created,
             snapshot_rank = EXCLUDED.snapshot_rank, snapshot_event_id = EXCLUDED.snapshot_event_id, updated_at = now()
           WHERE (payment_methods.snapshot_created, payment_methods.snapshot_rank, payment_methods.snapshot_event_id)
               < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank, EXCLUDED.snapshot_event_id)",
    )
    .bind(&method.id)
    .bind(&customer)
    .bind(&method.kind)
    .bind(card.and_then(|c| c.brand.as_deref()))
    .bind(card.and_then(|c| c.last4.as_deref()).filter(|l| l.len() == 4))
    .bind(card.and_then(|c| c.exp_month))
    .bind(card.and_then(|c| c.exp_year))
    .bind(!detached)
    .bind(envelope.created)
    .bind(lifecycle_rank(&envelope.event_type))
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    Ok(Applied::Processed)
}

pub async fn customer(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let customer: Customer = stripe::object(payload)?;
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
    customers::recompute_after_event(tx, plans, customer_id, envelope).await?;
    Ok(Applied::Processed)
}

/// The customer's active Stripe Entitlements feature lookup keys; they grant
/// features beside the tier's.
pub async fn entitlement_summary(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let summary: EntitlementSummary = stripe::object(payload)?;
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
