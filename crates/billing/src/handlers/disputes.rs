//! `charge.dispute.created`: flag the customer; revoke access if the plans
//! file's policy says so (`[policy] revoke_on_dispute`).

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::{self, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::{self, Dispute};

pub async fn created(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let dispute: Dispute = stripe::object(payload)?;
    let payment_intent = dispute.payment_intent.as_ref().map(|p| p.id());
    // A dispute names only the payment: find whose it was (an invoice, or a top-up).
    let stripe_customer: Option<String> = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM invoices WHERE charge = $1 OR payment_intent = $2
         UNION ALL
         SELECT c.stripe_customer_id FROM credit_ledger l JOIN customers c ON c.id = l.customer_id
          WHERE l.payment_intent = $2 AND c.stripe_customer_id IS NOT NULL
         LIMIT 1",
    )
    .bind(dispute.charge.id())
    .bind(payment_intent)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(stripe_customer) = stripe_customer else {
        // The payment's own event may not have arrived yet: retry with backoff, and
        // after the last attempt the dispute waits in the dead letters for review.
        return Err(ProcessError::Transient(format!(
            "dispute {}: no customer known for charge {}",
            dispute.id,
            dispute.charge.id()
        )));
    };
    let customer_id = customers::lock_or_create(tx, &stripe_customer).await?;
    sqlx::query(
        "UPDATE customers SET disputed_at = COALESCE(disputed_at, to_timestamp($2)),
                dispute_id = COALESCE(dispute_id, $3), updated_at = now()
          WHERE id = $1",
    )
    .bind(customer_id)
    .bind(envelope.created)
    .bind(&dispute.id)
    .execute(&mut **tx)
    .await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope).await?;
    Ok(Applied::Processed)
}
