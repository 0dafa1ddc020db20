//! Sample payloads, compiled in so `tollgate trigger` works from any directory.
//! They are the real Stripe payloads in tests/fixtures/stripe (see SOURCES.md there).

macro_rules! fixture {
    ($path:literal) => {
        include_str!(concat!("../../../tests/fixtures/stripe/", $path))
    };
}

/// Whole event envelopes.
const COMPLETE: &[(&str, &str)] = &[
    (
        "charge.dispute.created",
        fixture!("complete/charge.dispute.created.stripe-sync-engine.json"),
    ),
    (
        "charge.refunded",
        fixture!("complete/charge.refunded.stripe-sync-engine.json"),
    ),
    (
        "checkout.session.completed.payment",
        fixture!("complete/checkout.session.completed.payment_mode.stripe-sync-engine.json"),
    ),
    (
        "customer.subscription.created",
        fixture!("complete/customer.subscription.created.stripe-sync-engine.json"),
    ),
    (
        "customer.subscription.deleted",
        fixture!("complete/customer.subscription.deleted.stripe-sync-engine.json"),
    ),
    (
        "customer.subscription.updated",
        fixture!("complete/customer.subscription.updated.stripe-sync-engine.json"),
    ),
    (
        "entitlements.active_entitlement_summary.updated",
        fixture!(
            "complete/entitlements.active_entitlement_summary.updated.stripe-sync-engine.json"
        ),
    ),
    (
        "invoice.finalized",
        fixture!("complete/invoice.finalized.stripe-sync-engine.json"),
    ),
    (
        "invoice.paid",
        fixture!("complete/invoice.paid.stripe-sync-engine.json"),
    ),
    (
        "invoice.updated",
        fixture!("complete/invoice.updated.stripe-sync-engine.json"),
    ),
    (
        "payment_method.attached",
        fixture!("complete/payment_method.attached.stripe-sync-engine.json"),
    ),
    (
        "payment_method.detached",
        fixture!("complete/payment_method.detached.stripe-sync-engine.json"),
    ),
    (
        "refund.created",
        fixture!("complete/refund.created.stripe-sync-engine.json"),
    ),
];

/// Only `data` (`{"object": ..., "previous_attributes"?}`): wrapped in an envelope when sent.
const DATA_ONLY: &[(&str, &str)] = &[
    (
        "checkout.session.completed",
        fixture!("data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json"),
    ),
    (
        "customer.subscription.trial_will_end",
        fixture!("data-only/customer.subscription.trial_will_end.data-only.pay-rails.json"),
    ),
    (
        "invoice.payment_failed",
        fixture!("data-only/invoice.payment_failed.data-only.pay-rails.json"),
    ),
];

/// The names `trigger` accepts. `checkout.session.completed.payment` sends a
/// `checkout.session.completed` event in payment mode.
pub fn names() -> Vec<&'static str> {
    let mut names: Vec<_> = COMPLETE.iter().chain(DATA_ONLY).map(|(n, _)| *n).collect();
    names.sort_unstable();
    names
}

/// A sample event of that name: (event type, envelope as JSON).
pub fn sample(name: &str) -> Option<(String, serde_json::Value)> {
    if let Some((_, text)) = COMPLETE.iter().find(|(n, _)| *n == name) {
        let event: serde_json::Value = serde_json::from_str(text).ok()?;
        let event_type = event["type"].as_str()?.to_string();
        return Some((event_type, event));
    }
    let (_, text) = DATA_ONLY.iter().find(|(n, _)| *n == name)?;
    let data: serde_json::Value = serde_json::from_str(text).ok()?;
    let event = serde_json::json!({
        "id": "",
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": 0,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": name,
    });
    Some((name.to_string(), event))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_sample_is_an_event_of_its_type() {
        for name in super::names() {
            let (event_type, event) = super::sample(name).unwrap();
            assert_eq!(event["type"], event_type.as_str());
            assert!(name.starts_with(&event_type), "{name} vs {event_type}");
            assert!(event["data"]["object"].is_object(), "{name}");
        }
        assert!(super::sample("no.such.event").is_none());
    }
}
