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

use crate::customers::{Source, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::refetch::{Handled, Refetch};

/// Every event type `apply` acts on (the others are stored and ignored). `tollgate
/// reconcile` asks Stripe for exactly these; keep it in step with the match below (a
/// test checks that every type listed here is routed).
pub const HANDLED_EVENT_TYPES: &[&str] = &[
    "charge.dispute.closed",
    "charge.dispute.created",
    "charge.dispute.funds_reinstated",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.updated",
    "charge.refunded",
    "checkout.session.async_payment_succeeded",
    "checkout.session.completed",
    "customer.created",
    "customer.deleted",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
    "customer.updated",
    "entitlements.active_entitlement_summary.updated",
    "invoice.created",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.updated",
    "invoice.voided",
    "invoice_payment.canceled",
    "invoice_payment.created",
    "invoice_payment.paid",
    "invoice_payment.updated",
    "payment_method.attached",
    "payment_method.automatically_updated",
    "payment_method.detached",
    "payment_method.updated",
];

/// Whether `apply` acts on events of this type.
pub fn handles(event_type: &str) -> bool {
    HANDLED_EVENT_TYPES.binary_search(&event_type).is_ok()
}

/// Applies one event's effects inside the ledger transaction. Subscription and invoice
/// snapshots may stop instead, to have their object refetched (crate::refetch). `source`
/// is how the event reached us (the audit log's trigger source).
pub async fn apply(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
    source: Source,
) -> Result<Handled, ProcessError> {
    let applied = match envelope.event_type.as_str() {
        "checkout.session.completed" => {
            checkout::completed(tx, plans, envelope, payload, source).await
        }
        "checkout.session.async_payment_succeeded" => {
            credits::checkout_payment(tx, envelope, payload).await
        }
        "charge.refunded" => credits::refund(tx, envelope, payload).await,
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.closed"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated" => {
            disputes::snapshot(tx, plans, envelope, payload, source).await
        }
        "payment_method.attached"
        | "payment_method.detached"
        | "payment_method.updated"
        | "payment_method.automatically_updated" => {
            payment_methods::payment_method(tx, envelope, payload).await
        }
        "customer.created" | "customer.updated" | "customer.deleted" => {
            customer_events::customer(tx, plans, envelope, payload, source).await
        }
        "entitlements.active_entitlement_summary.updated" => {
            customer_events::entitlement_summary(tx, envelope, payload).await
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end" => {
            return subscriptions::snapshot(tx, plans, refetch, envelope, payload, source).await;
        }
        "invoice.created"
        | "invoice.finalized"
        | "invoice.updated"
        | "invoice.paid"
        | "invoice.payment_succeeded"
        | "invoice.payment_failed"
        | "invoice.voided"
        | "invoice.marked_uncollectible" => {
            return invoices::snapshot(tx, plans, refetch, envelope, payload, source).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handled_types_are_sorted_unique_and_each_is_routed() {
        assert!(HANDLED_EVENT_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert!(handles("invoice.paid"));
        assert!(!handles("charge.succeeded"));
        // Each listed type reaches a handler: the routing match names it (the catch-all
        // `_` would ignore it).
        let source = include_str!("mod.rs");
        let routing = &source[source.find("match envelope.event_type").unwrap()..];
        let routing = &routing[..routing.find("_ => Ok(Applied::Ignored)").unwrap()];
        for event_type in HANDLED_EVENT_TYPES {
            assert!(
                routing.contains(&format!("\"{event_type}\"")),
                "{event_type} is listed but not routed"
            );
        }
        let routed = routing.matches("\"").count() / 2;
        assert_eq!(
            routed,
            HANDLED_EVENT_TYPES.len(),
            "a routed type is not listed"
        );
    }
}
