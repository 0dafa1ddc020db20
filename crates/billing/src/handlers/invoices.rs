//! `invoice.*`: store the snapshot if it is the latest, keep the customer's
//! transaction history in step with it, then derive access (a failed payment
//! revokes at once, a paid invoice restores).

use chrono::{DateTime, Utc};
use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tollgate_stripe::ObjectKind;
use tracing::debug;

use crate::customers::{self, Source, Tx};
use crate::emails::{self, EmailData, Kind, NewEmail};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::refetch::{self, Handled, Refetch, Settled, SnapshotKey};
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

/// The columns an invoice snapshot decides (the ordering key aside). What paid it
/// (payment intent, charge) is merged, not replaced, so it is not part of the comparison.
#[derive(Debug, PartialEq, sqlx::FromRow)]
pub struct InvoiceRow {
    stripe_customer_id: String,
    stripe_subscription_id: Option<String>,
    status: String,
    number: Option<String>,
    billing_reason: Option<String>,
    currency: String,
    amount_due: i64,
    amount_paid: i64,
    amount_remaining: i64,
    attempted: bool,
    attempt_count: i32,
    hosted_invoice_url: Option<String>,
    invoice_pdf: Option<String>,
    invoice_created: i64,
    period_start: Option<DateTime<Utc>>,
    period_end: Option<DateTime<Utc>>,
    paid_at: Option<DateTime<Utc>>,
}

impl InvoiceRow {
    fn new(invoice: &Invoice) -> Result<Self, ProcessError> {
        if invoice.currency.len() != 3 {
            return Err(ProcessError::Poison(format!(
                "invoice {} has currency {:?}",
                invoice.id, invoice.currency
            )));
        }
        Ok(Self {
            stripe_customer_id: invoice.customer.id().to_string(),
            stripe_subscription_id: invoice.subscription_id().map(str::to_string),
            status: invoice.status.clone().unwrap_or_else(|| "open".into()),
            number: invoice.number.clone(),
            billing_reason: invoice.billing_reason.clone(),
            currency: invoice.currency.to_ascii_lowercase(),
            amount_due: invoice.amount_due,
            amount_paid: invoice.amount_paid,
            amount_remaining: invoice.amount_remaining,
            attempted: invoice.attempted.unwrap_or(false),
            attempt_count: invoice.attempt_count.unwrap_or(0),
            hosted_invoice_url: invoice.hosted_invoice_url.clone(),
            invoice_pdf: invoice.invoice_pdf.clone(),
            invoice_created: invoice.created,
            period_start: at(invoice.period_start),
            period_end: at(invoice.period_end),
            paid_at: at(invoice.paid_at()),
        })
    }
}

/// An invoice snapshot as the event carries it, with the row it decides.
#[derive(Debug)]
pub struct DecodedInvoice {
    pub invoice: Invoice,
    row: InvoiceRow,
}

/// The event's invoice and its row; an invoice that cannot make a row is poison.
pub fn decode(payload: &serde_json::Value) -> Result<DecodedInvoice, ProcessError> {
    let invoice: Invoice = stripe::object(payload)?;
    let row = InvoiceRow::new(&invoice)?;
    Ok(DecodedInvoice { invoice, row })
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    row: InvoiceRow,
    #[sqlx(flatten)]
    key: SnapshotKey,
}

pub async fn snapshot(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    envelope: &EventEnvelope,
    decoded: DecodedInvoice,
    source: Source,
) -> Result<Handled, ProcessError> {
    let DecodedInvoice { invoice, row } = decoded;
    let customer_id = customers::lock_or_create(tx, invoice.customer.id()).await?;
    let key = SnapshotKey::of_event(envelope, snapshot_rank(&row.status, &envelope.event_type));
    // The stored key is read only when a tie could be settled by Stripe.
    let stored = match refetch {
        Refetch::Off => None,
        _ => stored(tx, &invoice.id).await?,
    };
    let decode = |object: &serde_json::Value| {
        let fetched: Invoice = stripe::decode(object).map_err(|e| e.to_string())?;
        if fetched.id != invoice.id || fetched.customer.id() != invoice.customer.id() {
            return Err(format!(
                "Stripe returned invoice {} of customer {}",
                fetched.id,
                fetched.customer.id()
            ));
        }
        let row = InvoiceRow::new(&fetched).map_err(|e| e.to_string())?;
        Ok((row, Paid::of(&fetched)))
    };
    let stored = stored.as_ref().map(|s| refetch::Stored {
        key: &s.key,
        same_row: s.row == row,
    });
    let (write_row, key) = match refetch::settle(
        refetch,
        (ObjectKind::Invoice, &invoice.id),
        stored,
        (row, Paid::of(&invoice)),
        key,
        decode,
    ) {
        Settled::Write(row, key) => (row, key),
        Settled::Refetch(ambiguity) => return Ok(Handled::Refetch(ambiguity)),
    };
    write(tx, &invoice.id, &write_row, &key).await?;
    sync_transaction(tx, customer_id, &invoice.id).await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope, source).await?;
    queue_email(tx, envelope, &invoice, customer_id).await?;
    Ok(Applied::Processed.into())
}

/// What paid an invoice (before 2025 API versions): kept once known, so merged rather
/// than compared.
#[derive(Debug)]
struct Paid {
    payment_intent: Option<String>,
    charge: Option<String>,
}

impl Paid {
    fn of(invoice: &Invoice) -> Self {
        Self {
            payment_intent: invoice.payment_intent.as_ref().map(|p| p.id().to_string()),
            charge: invoice.charge.as_ref().map(|c| c.id().to_string()),
        }
    }
}

async fn stored(tx: &mut Tx, invoice_id: &str) -> Result<Option<Stored>, ProcessError> {
    Ok(sqlx::query_as(
        "SELECT stripe_customer_id, stripe_subscription_id, status, number, billing_reason, currency, amount_due,
                amount_paid, amount_remaining, attempted, attempt_count, hosted_invoice_url, invoice_pdf,
                invoice_created, period_start, period_end, paid_at,
                snapshot_created, snapshot_rank, snapshot_event_id, snapshot_refetched_at
           FROM invoices WHERE stripe_invoice_id = $1",
    )
    .bind(invoice_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Stores the row if its key is the greatest (the rule of `subscriptions::write`).
async fn write(
    tx: &mut Tx,
    invoice_id: &str,
    (row, paid): &(InvoiceRow, Paid),
    key: &SnapshotKey,
) -> Result<(), ProcessError> {
    sqlx::query(
        "INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, number, billing_reason,
                               currency, amount_due, amount_paid, amount_remaining, attempted, attempt_count,
                               hosted_invoice_url, invoice_pdf, invoice_created, period_start, period_end, paid_at,
                               snapshot_created, snapshot_rank, snapshot_event_id, snapshot_refetched_at,
                               payment_intent, charge)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21,
                 $22, $23, $24)
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
             snapshot_refetched_at = EXCLUDED.snapshot_refetched_at,
             payment_intent = COALESCE(EXCLUDED.payment_intent, invoices.payment_intent),
             charge = COALESCE(EXCLUDED.charge, invoices.charge), updated_at = now()
           WHERE (invoices.snapshot_created, invoices.snapshot_rank)
                   < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank)
              OR ((invoices.snapshot_created, invoices.snapshot_rank)
                   = (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank)
                  AND (EXCLUDED.snapshot_refetched_at IS NOT NULL
                       OR (invoices.snapshot_refetched_at IS NULL
                           AND invoices.snapshot_event_id < EXCLUDED.snapshot_event_id)))",
    )
    .bind(invoice_id)
    .bind(&row.stripe_customer_id)
    .bind(&row.stripe_subscription_id)
    .bind(&row.status)
    .bind(&row.number)
    .bind(&row.billing_reason)
    .bind(&row.currency)
    .bind(row.amount_due)
    .bind(row.amount_paid)
    .bind(row.amount_remaining)
    .bind(row.attempted)
    .bind(row.attempt_count)
    .bind(&row.hosted_invoice_url)
    .bind(&row.invoice_pdf)
    .bind(row.invoice_created)
    .bind(row.period_start)
    .bind(row.period_end)
    .bind(row.paid_at)
    .bind(key.snapshot_created)
    .bind(key.snapshot_rank)
    .bind(&key.snapshot_event_id)
    .bind(key.snapshot_refetched_at)
    .bind(&paid.payment_intent)
    .bind(&paid.charge)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
