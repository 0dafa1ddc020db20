//! Event handlers, routed on the event's type string.

mod checkout;
pub mod credits;
mod customer_events;
mod disputes;
mod invoice_payments;
mod invoices;
mod payment_methods;
mod subscriptions;

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::Tx;
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::refetch::{Handled, Refetch};

/// Applies one event's effects inside the ledger transaction. Subscription and invoice
/// snapshots may stop instead, to have their object refetched (crate::refetch).
pub async fn apply(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Handled, ProcessError> {
    let applied = match envelope.event_type.as_str() {
        "checkout.session.completed" => checkout::completed(tx, plans, envelope, payload).await,
        "checkout.session.async_payment_succeeded" => {
            credits::checkout_payment(tx, envelope, payload).await
        }
        "charge.refunded" => credits::refund(tx, envelope, payload).await,
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.closed"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated" => {
            disputes::snapshot(tx, plans, envelope, payload).await
        }
        "payment_method.attached"
        | "payment_method.detached"
        | "payment_method.updated"
        | "payment_method.automatically_updated" => {
            payment_methods::payment_method(tx, envelope, payload).await
        }
        "customer.created" | "customer.updated" | "customer.deleted" => {
            customer_events::customer(tx, plans, envelope, payload).await
        }
        "entitlements.active_entitlement_summary.updated" => {
            customer_events::entitlement_summary(tx, envelope, payload).await
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end" => {
            return subscriptions::snapshot(tx, plans, refetch, envelope, payload).await;
        }
        "invoice.created"
        | "invoice.finalized"
        | "invoice.updated"
        | "invoice.paid"
        | "invoice.payment_succeeded"
        | "invoice.payment_failed"
        | "invoice.voided"
        | "invoice.marked_uncollectible" => {
            return invoices::snapshot(tx, plans, refetch, envelope, payload).await;
        }
        "invoice_payment.paid"
        | "invoice_payment.canceled"
        | "invoice_payment.created"
        | "invoice_payment.updated" => invoice_payments::link(tx, envelope, payload).await,
        _ => Ok(Applied::Ignored),
    };
    applied.map(Handled::Applied)
}

/// Same-second tie-breaker for objects whose lifecycle is created → attached →
/// updated → deleted/detached.
fn lifecycle_rank(event_type: &str) -> i32 {
    match event_type {
        t if t.ends_with(".created") => 0,
        t if t.ends_with(".attached") => 1,
        t if t.ends_with(".deleted") || t.ends_with(".detached") => 3,
        _ => 2,
    }
}
