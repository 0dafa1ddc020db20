//! Event handlers, routed on the event's type string.

mod checkout;
mod invoices;
mod subscriptions;

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::Tx;
use crate::ledger::Applied;
use crate::process::ProcessError;

/// Applies one event's effects inside the ledger transaction.
pub async fn apply(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    match envelope.event_type.as_str() {
        "checkout.session.completed" => checkout::completed(tx, plans, envelope, payload).await,
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end" => {
            subscriptions::snapshot(tx, plans, envelope, payload).await
        }
        "invoice.created"
        | "invoice.finalized"
        | "invoice.updated"
        | "invoice.paid"
        | "invoice.payment_succeeded"
        | "invoice.payment_failed"
        | "invoice.voided"
        | "invoice.marked_uncollectible" => invoices::snapshot(tx, plans, envelope, payload).await,
        _ => Ok(Applied::Ignored),
    }
}
