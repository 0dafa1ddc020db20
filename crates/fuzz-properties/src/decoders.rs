//! Billing's event decoding: the message body to envelope and JSON value
//! (`process::decode`), then `data.object` to the type each handler reads
//! (`handlers::decode`), every step before the database.
//!
//! Input: an event body. It is decoded as its own `type` says, and also as every
//! other handled type, so each seed reaches every decoder.

use serde_json::Value;
use tollgate_billing::handlers::{self, EventObject, HANDLED_EVENT_TYPES};
use tollgate_billing::process;
use tollgate_events::EventEnvelope;

/// A field no Stripe object has: adding it must change nothing.
const UNKNOWN_FIELD: &str = "tollgate_fuzz_unknown_field";
/// Types billing stores and ignores.
const IGNORED_TYPES: &[&str] = &["charge.succeeded", ""];

pub fn check(data: &[u8]) {
    let decoded = process::decode(data);
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        assert!(decoded.is_err(), "a body that is not JSON is poison");
        return;
    };
    match &decoded {
        Ok(event) => {
            assert_eq!(event.payload, payload);
            assert_eq!(
                EventEnvelope::from_value(&payload).ok().as_ref(),
                Some(&event.envelope)
            );
        }
        Err(error) => {
            assert!(error.is_poison(), "{error}");
            assert!(EventEnvelope::from_value(&payload).is_err());
        }
    }
    let mut extended = payload.clone();
    if let Some(Value::Object(object)) = extended.pointer_mut("/data/object") {
        object.insert(UNKNOWN_FIELD.into(), Value::Bool(true));
    }
    for event_type in HANDLED_EVENT_TYPES.iter().chain(IGNORED_TYPES) {
        check_route(event_type, &payload, &extended);
    }
}

fn check_route(event_type: &str, payload: &Value, extended: &Value) {
    let result = handlers::decode(event_type, payload);
    // Unknown fields are ignored, whatever the API version adds.
    assert_eq!(
        format!("{result:?}"),
        format!("{:?}", handlers::decode(event_type, extended)),
        "{event_type}: an unknown field changed the decoding"
    );
    let object = match result {
        Err(error) => {
            assert!(error.is_poison(), "{event_type}: {error}");
            assert!(handlers::handles(event_type));
            return;
        }
        Ok(object) => object,
    };
    assert_eq!(
        handlers::handles(event_type),
        !matches!(object, EventObject::Ignored),
        "{event_type}: routed iff handled"
    );
    if handlers::handles(event_type) {
        assert!(
            payload.pointer("/data/object").is_some(),
            "{event_type}: decoded without a data.object"
        );
    }
    match object {
        EventObject::CheckoutCompleted(session)
        | EventObject::CheckoutPaymentSucceeded(session) => {
            assert!(session.user_id().is_none_or(|id| !id.is_empty()));
            assert!(session.credits().is_none_or(|n| n > 0));
            let _ = session.email();
        }
        EventObject::Subscription(subscription) => {
            let item = subscription.items.as_ref().and_then(|i| i.data.first());
            let (start, end) = subscription.period();
            assert_eq!(
                start,
                subscription
                    .current_period_start
                    .or(item.and_then(|i| i.current_period_start))
            );
            assert_eq!(
                end,
                subscription
                    .current_period_end
                    .or(item.and_then(|i| i.current_period_end))
            );
            assert_eq!(
                subscription.price().map(|p| &p.id),
                item.and_then(|i| i.price.as_ref()).map(|p| &p.id)
            );
        }
        EventObject::Invoice(decoded) => {
            let invoice = &decoded.invoice;
            assert_eq!(
                invoice.currency.len(),
                3,
                "an invoice row needs an ISO currency"
            );
            if invoice.subscription.is_some() {
                assert_eq!(
                    invoice.subscription_id(),
                    invoice.subscription.as_ref().map(|s| s.id())
                );
            }
            let _ = invoice.paid_at();
        }
        EventObject::Refund(_)
        | EventObject::Dispute(_)
        | EventObject::PaymentMethod(_)
        | EventObject::Customer(_)
        | EventObject::EntitlementSummary(_)
        | EventObject::InvoicePayment(_)
        | EventObject::Ignored => {}
    }
}
