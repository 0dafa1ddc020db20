//! `invoice_payment.*` (API 2025-03-31 and later): which payment paid which
//! invoice. Stored as a link only; a dispute on that payment follows it to the
//! invoice and so to the customer.

use tollgate_events::EventEnvelope;

use crate::customers::Tx;
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::InvoicePayment;

pub async fn link(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    payment: &InvoicePayment,
) -> Result<Applied, ProcessError> {
    let (payment_intent, charge) = match &payment.payment {
        Some(p) => (
            p.payment_intent.as_ref().map(|x| x.id()),
            p.charge.as_ref().map(|x| x.id()),
        ),
        None => (None, None),
    };
    if payment_intent.is_none() && charge.is_none() {
        // A payment record (paid outside Stripe): nothing a dispute could name.
        return Ok(Applied::Ignored);
    }
    // The link itself never changes; only the status moves (open → paid/canceled).
    sqlx::query(
        "INSERT INTO invoice_payments (stripe_invoice_payment_id, stripe_invoice_id, payment_intent, charge, status,
                                       stripe_event_id)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (stripe_invoice_payment_id) DO UPDATE SET
             payment_intent = COALESCE(invoice_payments.payment_intent, EXCLUDED.payment_intent),
             charge = COALESCE(invoice_payments.charge, EXCLUDED.charge),
             status = CASE WHEN invoice_payments.status = 'paid' THEN 'paid' ELSE EXCLUDED.status END,
             updated_at = now()",
    )
    .bind(&payment.id)
    .bind(payment.invoice.id())
    .bind(payment_intent)
    .bind(charge)
    .bind(payment.status.as_deref().unwrap_or("open"))
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    Ok(Applied::Processed)
}
