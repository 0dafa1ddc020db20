//! `payment_method.*` snapshots: type, brand, last4 and expiry, never a number.

use tollgate_events::EventEnvelope;

use super::lifecycle_rank;
use crate::customers::{self, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::PaymentMethod;

pub async fn payment_method(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
    method: &PaymentMethod,
) -> Result<Applied, ProcessError> {
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
