//! Business metrics: what an applied event means for the business (a payment that
//! succeeded or failed, a checkout that converted, a cancellation), counted once the
//! event's transaction committed. Duplicates, ignored events and rolled-back work are
//! never counted, so the counters agree with the ledger. A redelivered event is a
//! duplicate, so a crash between commit and ack cannot count a fact twice; a crash
//! between commit and this call can undercount by that event (counters restart from
//! zero with the process anyway).
//!
//! Active subscriptions by tier are a gauge read from the database instead
//! (crate::gauges): a count of rows is right whatever order events arrived in.

use tollgate_events::EventEnvelope;

use crate::ledger::Applied;
use crate::process::Outcome;

/// Called once per event after its transaction committed.
pub fn committed(envelope: &EventEnvelope, payload: &serde_json::Value, outcome: &Outcome) {
    if *outcome != Outcome::Applied(Applied::Processed) {
        return;
    }
    match envelope.event_type.as_str() {
        "invoice.paid" => {
            metrics::counter!("tollgate_billing_payments_total", "outcome" => "succeeded")
                .increment(1);
        }
        "invoice.payment_failed" => {
            metrics::counter!("tollgate_billing_payments_total", "outcome" => "failed")
                .increment(1);
        }
        // A delayed payment method completes the checkout later: then it converts.
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let mode = match payload
                .pointer("/data/object/mode")
                .and_then(|m| m.as_str())
            {
                Some("subscription") => "subscription",
                Some("payment") => "payment",
                Some("setup") => "setup",
                _ => "other",
            };
            metrics::counter!("tollgate_billing_checkout_conversions_total", "mode" => mode)
                .increment(1);
        }
        // Stripe sends this once, when a subscription has ended (cancelled now, at
        // period end, or for non-payment).
        "customer.subscription.deleted" => {
            metrics::counter!("tollgate_billing_cancellations_total").increment(1);
        }
        _ => {}
    }
}
