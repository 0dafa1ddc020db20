//! `invoice.*`: store the snapshot if it is the latest, keep the customer's
//! transaction history in step with it, then derive access (a failed payment
//! revokes at once, a paid invoice restores).

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tracing::debug;

use crate::customers::{self, Tx};
use crate::emails::{self, EmailData, Kind, NewEmail};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::{self, Invoice, at};

fn status_rank(status: &str) -> i32 {
    match status {
        "draft" => 0,
        "open" => 1,
        "paid" | "void" | "uncollectible" => 2,
        _ => 0,
    }
}

fn type_rank(event_type: &str) -> i32 {
    match event_type {
        "invoice.created" => 0,
        "invoice.finalized" | "invoice.updated" => 1,
        "invoice.payment_failed" => 2,
        _ => 3, // paid, payment_succeeded, voided, marked_uncollectible
    }
}

/// Same-second tie-breaker for invoice snapshots (docs/billing-state.md).
pub fn snapshot_rank(status: &str, event_type: &str) -> i32 {
    status_rank(status) * 4 + type_rank(event_type)
}

pub async fn snapshot(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let invoice: Invoice = stripe::object(payload)?;
    let status = invoice.status.clone().unwrap_or_else(|| "open".into());
    if invoice.currency.len() != 3 {
        return Err(ProcessError::Poison(format!(
            "invoice {} has currency {:?}",
            invoice.id, invoice.currency
        )));
    }
    let customer_id = customers::lock_or_create(tx, invoice.customer.id()).await?;
    sqlx::query(
        "INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, number, billing_reason,
                               currency, amount_due, amount_paid, amount_remaining, attempted, attempt_count,
                               hosted_invoice_url, invoice_pdf, invoice_created, period_start, period_end, paid_at,
                               snapshot_created, snapshot_rank, snapshot_event_id, payment_intent, charge)
         VALUES ($1, $2, $3, $4, $5, $6, lower($7), $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                 $22, $23)
         ON CONFLICT (stripe_invoice_id) DO UPDATE SET
             stripe_subscription_id = EXCLUDED.stripe_subscription_id, status = EXCLUDED.status,
             number = EXCLUDED.number, billing_reason = EXCLUDED.billing_reason, currency = EXCLUDED.currency,
             amount_due = EXCLUDED.amount_due, amount_paid = EXCLUDED.amount_paid,
             amount_remaining = EXCLUDED.amount_remaining, attempted = EXCLUDED.attempted,
             attempt_count = EXCLUDED.attempt_count, hosted_invoice_url = EXCLUDED.hosted_invoice_url,
             invoice_pdf = EXCLUDED.invoice_pdf, invoice_created = EXCLUDED.invoice_created,
             period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end, paid_at = EXCLUDED.paid_at,
             snapshot_created = EXCLUDED.snapshot_created, snapshot_rank = EXCLUDED.snapshot_rank,
             snapshot_event_id = EXCLUDED.snapshot_event_id,
             payment_intent = COALESCE(EXCLUDED.payment_intent, invoices.payment_intent),
             charge = COALESCE(EXCLUDED.charge, invoices.charge), updated_at = now()
           WHERE (invoices.snapshot_created, invoices.snapshot_rank, invoices.snapshot_event_id)
               < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank, EXCLUDED.snapshot_event_id)",
    )
    .bind(&invoice.id)
    .bind(invoice.customer.id())
    .bind(invoice.subscription_id())
    .bind(&status)
    .bind(&invoice.number)
    .bind(&invoice.billing_reason)
    .bind(&invoice.currency)
    .bind(invoice.amount_due)
    .bind(invoice.amount_paid)
    .bind(invoice.amount_remaining)
    .bind(invoice.attempted.unwrap_or(false))
    .bind(invoice.attempt_count.unwrap_or(0))
    .bind(&invoice.hosted_invoice_url)
    .bind(&invoice.invoice_pdf)
    .bind(invoice.created)
    .bind(at(invoice.period_start))
    .bind(at(invoice.period_end))
    .bind(at(invoice.paid_at()))
    .bind(envelope.created)
    .bind(snapshot_rank(&status, &envelope.event_type))
    .bind(&envelope.id)
    .bind(invoice.payment_intent.as_ref().map(|p| p.id()))
    .bind(invoice.charge.as_ref().map(|c| c.id()))
    .execute(&mut **tx)
    .await?;
    sync_transaction(tx, customer_id, &invoice.id).await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope).await?;
    queue_email(tx, envelope, &invoice, customer_id).await?;
    Ok(Applied::Processed)
}

/// The payment-failed email or the receipt, when what the event reports is
/// still true of the stored invoice (this event's snapshot, or a newer one that
/// won the gate): no "payment failed" for an invoice already paid or for an
/// attempt a later one superseded, no receipt for nothing paid. One receipt per
/// invoice, whether `invoice.paid`, `invoice.payment_succeeded` or both arrive.
async fn queue_email(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    invoice: &Invoice,
    customer_id: uuid::Uuid,
) -> Result<(), ProcessError> {
    let kind = match envelope.event_type.as_str() {
        "invoice.payment_failed" => Kind::PaymentFailed,
        "invoice.paid" | "invoice.payment_succeeded" => Kind::Receipt,
        _ => return Ok(()),
    };
    let (stored_status, stored_attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempt_count FROM invoices WHERE stripe_invoice_id = $1")
            .bind(&invoice.id)
            .fetch_one(&mut **tx)
            .await?;
    let attempt = invoice.attempt_count.unwrap_or(0);
    let mut data = EmailData {
        currency: Some(invoice.currency.to_ascii_lowercase()),
        invoice_number: invoice.number.clone(),
        hosted_invoice_url: invoice.hosted_invoice_url.clone(),
        for_subscription: invoice.subscription_id().is_some(),
        ..EmailData::default()
    };
    let (still_true, dedupe_key) = match kind {
        Kind::PaymentFailed => {
            data.amount = Some(invoice.amount_remaining);
            data.next_payment_attempt = invoice.next_payment_attempt;
            (
                invoice.amount_remaining > 0
                    && !matches!(stored_status.as_str(), "paid" | "void")
                    && attempt >= stored_attempts,
                format!("payment_failed:{}:{attempt}", invoice.id),
            )
        }
        _ => {
            data.amount = Some(invoice.amount_paid);
            data.paid_at = invoice.paid_at();
            (
                invoice.status.as_deref() == Some("paid")
                    && stored_status == "paid"
                    && invoice.amount_paid > 0,
                format!("receipt:{}", invoice.id),
            )
        }
    };
    if !still_true {
        debug!(event_id = %envelope.id, %customer_id, kind = kind.as_str(), stored_status,
               "invoice email not queued: no longer (or never) true");
        return Ok(());
    }
    let email = NewEmail {
        kind,
        dedupe_key,
        stripe_object_id: &invoice.id,
        customer_id,
        fallback_recipient: invoice.customer_email.as_deref(),
        data,
    };
    emails::enqueue(tx, envelope, email).await
}

/// The subscription-payment transaction mirrors the *stored* invoice, so it is as
/// order-independent as the invoice itself. Drafts and never-attempted open
/// invoices are not (yet) payments.
async fn sync_transaction(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    invoice_id: &str,
) -> Result<(), ProcessError> {
    sqlx::query(
        "INSERT INTO transactions (customer_id, kind, status, currency, amount, stripe_object_id, description, occurred_at)
         SELECT $1, 'subscription_payment',
                CASE WHEN i.status = 'paid' THEN 'succeeded'
                     WHEN i.status = 'void' THEN 'canceled'
                     WHEN i.status = 'uncollectible' OR i.attempted THEN 'failed'
                     ELSE 'pending' END,
                i.currency,
                CASE WHEN i.status = 'paid' THEN i.amount_paid ELSE i.amount_due END,
                i.stripe_invoice_id,
                COALESCE('Invoice ' || i.number, 'Invoice'),
                COALESCE(i.paid_at, to_timestamp(i.invoice_created))
           FROM invoices i
          WHERE i.stripe_invoice_id = $2 AND i.stripe_subscription_id IS NOT NULL
            AND (i.status IN ('paid', 'void', 'uncollectible') OR i.attempted)
         ON CONFLICT (kind, stripe_object_id) DO UPDATE SET
             status = EXCLUDED.status, currency = EXCLUDED.currency, amount = EXCLUDED.amount,
             description = EXCLUDED.description, occurred_at = EXCLUDED.occurred_at, updated_at = now()",
    )
    .bind(customer_id)
    .bind(invoice_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paid_invoice_outranks_a_failed_attempt_of_the_same_second() {
        assert!(
            snapshot_rank("paid", "invoice.paid") > snapshot_rank("open", "invoice.payment_failed")
        );
        assert!(
            snapshot_rank("open", "invoice.payment_failed")
                > snapshot_rank("open", "invoice.finalized")
        );
        assert!(
            snapshot_rank("open", "invoice.finalized") > snapshot_rank("draft", "invoice.created")
        );
    }
}
