//! `charge.dispute.*`: a dispute row per dispute, gated like every snapshot. A
//! customer counts as disputed while any of their disputes is not won (or a
//! warning closed); access is revoked for that only if the plans file's policy
//! says so (`[policy] revoke_on_dispute`).

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::{self, Source, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::Dispute;

fn rank(event_type: &str) -> i32 {
    match event_type {
        "charge.dispute.created" => 0,
        "charge.dispute.closed" => 2,
        _ => 1, // updated, funds_withdrawn, funds_reinstated
    }
}

pub async fn snapshot(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    dispute: &Dispute,
    source: Source,
) -> Result<Applied, ProcessError> {
    let payment_intent = dispute.payment_intent.as_ref().map(|p| p.id());
    // A dispute names only the payment: find whose it was (an invoice — directly
    // before API 2025-03-31, through its invoice_payment after — or a top-up).
    let stripe_customer: Option<String> = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM invoices WHERE charge = $1 OR payment_intent = $2
         UNION ALL
         SELECT i.stripe_customer_id FROM invoice_payments p JOIN invoices i ON i.stripe_invoice_id = p.stripe_invoice_id
          WHERE p.charge = $1 OR p.payment_intent = $2
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
    let status = dispute.status.as_deref().unwrap_or("needs_response");
    sqlx::query(
        "INSERT INTO disputes (stripe_dispute_id, customer_id, charge, status, snapshot_created, snapshot_rank, snapshot_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (stripe_dispute_id) DO UPDATE SET
             status = EXCLUDED.status, snapshot_created = EXCLUDED.snapshot_created,
             snapshot_rank = EXCLUDED.snapshot_rank, snapshot_event_id = EXCLUDED.snapshot_event_id, updated_at = now()
           WHERE (disputes.snapshot_created, disputes.snapshot_rank, disputes.snapshot_event_id)
               < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank, EXCLUDED.snapshot_event_id)",
    )
    .bind(&dispute.id)
    .bind(customer_id)
    .bind(dispute.charge.id())
    .bind(status)
    .bind(envelope.created)
    .bind(rank(&envelope.event_type))
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope, source).await?;
    Ok(Applied::Processed)
}
