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
use crate::stripe::{
    self, Charge, CheckoutSession, Customer, Dispute, EntitlementSummary, InvoicePayment,
    PaymentMethod, Subscription,
};

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

/// An event's `data.object` decoded as the type its handler reads: everything about
/// an event that can be checked without the database. Pure, so it is fuzzed
/// (docs/fuzzing.md).
#[derive(Debug)]
pub enum EventObject {
    /// `checkout.session.completed`.
    CheckoutCompleted(Box<CheckoutSession>),
    /// `checkout.session.async_payment_succeeded`.
    CheckoutPaymentSucceeded(Box<CheckoutSession>),
    /// `charge.refunded`.
    Refund(Charge),
    /// `charge.dispute.*`.
    Dispute(Dispute),
    /// `payment_method.*`.
    PaymentMethod(PaymentMethod),
    /// `customer.created`, `.updated`, `.deleted`.
    Customer(Customer),
    /// `entitlements.active_entitlement_summary.updated`.
    EntitlementSummary(EntitlementSummary),
    /// `customer.subscription.*`.
    Subscription(Box<Subscription>),
    /// `invoice.*`, with the row it would store (built here: a malformed invoice is
    /// poison before any row is locked).
    Invoice(Box<invoices::DecodedInvoice>),
    /// `invoice_payment.*`.
    InvoicePayment(InvoicePayment),
    /// A type `apply` does not act on: stored and ignored.
    Ignored,
}

/// Decodes an event's object for the handler of `event_type`: the routing `apply`
/// follows. A known type whose object cannot be decoded is poison.
pub fn decode(event_type: &str, payload: &serde_json::Value) -> Result<EventObject, ProcessError> {
    Ok(match event_type {
        "checkout.session.completed" => EventObject::CheckoutCompleted(stripe::object(payload)?),
        "checkout.session.async_payment_succeeded" => {
            EventObject::CheckoutPaymentSucceeded(stripe::object(payload)?)
        }
        "charge.refunded" => EventObject::Refund(stripe::object(payload)?),
        "charge.dispute.created"
        | "charge.dispute.updated"
        | "charge.dispute.closed"
        | "charge.dispute.funds_withdrawn"
        | "charge.dispute.funds_reinstated" => EventObject::Dispute(stripe::object(payload)?),
        "payment_method.attached"
        | "payment_method.detached"
        | "payment_method.updated"
        | "payment_method.automatically_updated" => {
            EventObject::PaymentMethod(stripe::object(payload)?)
        }
        "customer.created" | "customer.updated" | "customer.deleted" => {
            EventObject::Customer(stripe::object(payload)?)
        }
        "entitlements.active_entitlement_summary.updated" => {
            EventObject::EntitlementSummary(stripe::object(payload)?)
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end" => {
            EventObject::Subscription(stripe::object(payload)?)
        }
        "invoice.created"
        | "invoice.finalized"
        | "invoice.updated"
        | "invoice.paid"
        | "invoice.payment_succeeded"
        | "invoice.payment_failed"
        | "invoice.voided"
        | "invoice.marked_uncollectible" => {
            EventObject::Invoice(Box::new(invoices::decode(payload)?))
        }
        "invoice_payment.paid"
        | "invoice_payment.canceled"
        | "invoice_payment.created"
        | "invoice_payment.updated" => EventObject::InvoicePayment(stripe::object(payload)?),
        _ => EventObject::Ignored,
    })
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
    let applied = match decode(&envelope.event_type, payload)? {
        EventObject::CheckoutCompleted(session) => {
            checkout::completed(tx, plans, envelope, &session, source).await
        }
        EventObject::CheckoutPaymentSucceeded(session) => {
            credits::checkout_payment(tx, envelope, &session).await
        }
        EventObject::Refund(charge) => credits::refund(tx, envelope, &charge).await,
        EventObject::Dispute(dispute) => {
            disputes::snapshot(tx, plans, envelope, &dispute, source).await
        }
        EventObject::PaymentMethod(method) => {
            payment_methods::payment_method(tx, envelope, payload, &method).await
        }
        EventObject::Customer(customer) => {
            customer_events::customer(tx, plans, envelope, &customer, source).await
        }
        EventObject::EntitlementSummary(summary) => {
            customer_events::entitlement_summary(tx, envelope, summary).await
        }
        EventObject::Subscription(subscription) => {
            return subscriptions::snapshot(
                tx,
                plans,
                refetch,
                envelope,
                payload,
                &subscription,
                source,
            )
            .await;
        }
        EventObject::Invoice(invoice) => {
            return invoices::snapshot(tx, plans, refetch, envelope, *invoice, source).await;
        }
        EventObject::InvoicePayment(payment) => {
            invoice_payments::link(tx, envelope, &payment).await
        }
        EventObject::Ignored => Ok(Applied::Ignored),
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
        let routing = &source[source.find("match event_type {").unwrap()..];
        let routing = &routing[..routing.find("_ => EventObject::Ignored").unwrap()];
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
