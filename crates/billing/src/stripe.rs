//! Narrow views of Stripe objects: only the fields billing reads, all optional
//! where any API version may leave them out, unknown fields ignored. Routing is
//! on the event's type string, never on a typed event enum.

use serde::Deserialize;

/// A field Stripe sends either as an id or, when expanded, as the object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
}

#[derive(Debug, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub customer: Expandable,
    pub status: String,
    #[serde(default)]
    pub cancel_at_period_end: Option<bool>,
    /// Before the 2025 API versions the period sits here; since then on each item.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub trial_end: Option<i64>,
    #[serde(default)]
    pub canceled_at: Option<i64>,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub items: Option<List<SubscriptionItem>>,
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub product: Option<Expandable>,
    #[serde(default)]
    pub recurring: Option<Recurring>,
}

#[derive(Debug, Deserialize)]
pub struct Recurring {
    pub interval: String,
}

impl Subscription {
    fn first_item(&self) -> Option<&SubscriptionItem> {
        self.items.as_ref().and_then(|items| items.data.first())
    }

    pub fn price(&self) -> Option<&Price> {
        self.first_item().and_then(|item| item.price.as_ref())
    }

    pub fn period(&self) -> (Option<i64>, Option<i64>) {
        let item = self.first_item();
        (
            self.current_period_start
                .or_else(|| item.and_then(|i| i.current_period_start)),
            self.current_period_end
                .or_else(|| item.and_then(|i| i.current_period_end)),
        )
    }
}

#[derive(Debug, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    pub mode: Option<String>,
    #[serde(default)]
    pub customer: Option<Expandable>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub subscription: Option<Expandable>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub customer_details: Option<CustomerDetails>,
    #[serde(default)]
    pub customer_email: Option<String>,
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    #[serde(default)]
    pub customer: Option<Expandable>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub card: Option<Card>,
}

/// Only what may be shown to a customer: never a number.
#[derive(Debug, Deserialize)]
pub struct Card {
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default)]
    pub last4: Option<String>,
    #[serde(default)]
    pub exp_month: Option<i16>,
    #[serde(default)]
    pub exp_year: Option<i16>,
}

#[derive(Debug, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, Option<String>>>,
    #[serde(default)]
    pub invoice_settings: Option<InvoiceSettings>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceSettings {
    #[serde(default)]
    pub default_payment_method: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
pub struct EntitlementSummary {
    pub customer: String,
    pub entitlements: List<ActiveEntitlement>,
}

#[derive(Debug, Deserialize)]
pub struct ActiveEntitlement {
    pub lookup_key: String,
}

#[derive(Debug, Deserialize)]
pub struct Charge {
    pub id: String,
    #[serde(default)]
    pub customer: Option<Expandable>,
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub currency: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
}

/// An `invoice_payment` (API 2025-03-31 and later).
#[derive(Debug, Deserialize)]
pub struct InvoicePayment {
    pub id: String,
    pub invoice: Expandable,
    #[serde(default)]
    pub payment: Option<InvoicePaymentTarget>,
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InvoicePaymentTarget {
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    #[serde(default)]
    pub charge: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
pub struct CustomerDetails {
    #[serde(default)]
    pub email: Option<String>,
}

impl CheckoutSession {
    /// Our user id: `client_reference_id`, else `metadata.user_id`.
    pub fn user_id(&self) -> Option<&str> {
        self.client_reference_id
            .as_deref()
            .or_else(|| {
                self.metadata
                    .as_ref()
                    .and_then(|m| m.get("user_id"))
                    .and_then(|v| v.as_deref())
            })
            .filter(|id| !id.is_empty())
    }

    /// Credits bought, for a top-up checkout (metadata `credits`, set by our checkout).
    pub fn credits(&self) -> Option<i64> {
        self.metadata
            .as_ref()?
            .get("credits")?
            .as_deref()?
            .parse()
            .ok()
            .filter(|n: &i64| *n > 0)
    }

    pub fn email(&self) -> Option<&str> {
        self.customer_details
            .as_ref()
            .and_then(|d| d.email.as_deref())
            .or(self.customer_email.as_deref())
    }
}

#[derive(Debug, Deserialize)]
pub struct Invoice {
    pub id: String,
    pub customer: Expandable,
    /// API versions before 2025: the subscription is here.
    #[serde(default)]
    pub subscription: Option<Expandable>,
    /// 2025 ("basil") and later: under `parent.subscription_details`.
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    pub status: Option<String>,
    #[serde(default)]
    pub number: Option<String>,
    #[serde(default)]
    pub billing_reason: Option<String>,
    pub currency: String,
    pub amount_due: i64,
    #[serde(default)]
    pub amount_paid: i64,
    #[serde(default)]
    pub amount_remaining: i64,
    #[serde(default)]
    pub attempted: Option<bool>,
    #[serde(default)]
    pub attempt_count: Option<i32>,
    #[serde(default)]
    pub hosted_invoice_url: Option<String>,
    #[serde(default)]
    pub invoice_pdf: Option<String>,
    /// The address the invoice was sent to (personal data: never logged).
    #[serde(default)]
    pub customer_email: Option<String>,
    /// When Stripe retries a failed payment next, if it will.
    #[serde(default)]
    pub next_payment_attempt: Option<i64>,
    pub created: i64,
    #[serde(default)]
    pub period_start: Option<i64>,
    #[serde(default)]
    pub period_end: Option<i64>,
    #[serde(default)]
    pub status_transitions: Option<StatusTransitions>,
    /// Before 2025 API versions; later versions list payments separately.
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
    #[serde(default)]
    pub charge: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub charge: Expandable,
    /// `won`, `lost`, `warning_closed`, `needs_response`, ...
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default)]
    pub subscription: Option<Expandable>,
}

#[derive(Debug, Deserialize)]
pub struct StatusTransitions {
    #[serde(default)]
    pub paid_at: Option<i64>,
}

impl Invoice {
    /// The subscription, in either API shape.
    pub fn subscription_id(&self) -> Option<&str> {
        self.subscription
            .as_ref()
            .or_else(|| {
                self.parent
                    .as_ref()
                    .and_then(|p| p.subscription_details.as_ref())
                    .and_then(|d| d.subscription.as_ref())
            })
            .map(Expandable::id)
    }

    pub fn paid_at(&self) -> Option<i64> {
        self.status_transitions.as_ref().and_then(|t| t.paid_at)
    }
}

/// A Stripe timestamp (unix seconds) as a database timestamp.
pub fn at(seconds: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    seconds.and_then(|s| chrono::DateTime::from_timestamp(s, 0))
}

/// `data.object` of an event, decoded as `T`; a known type we cannot decode is poison.
pub fn object<T: serde::de::DeserializeOwned>(
    payload: &serde_json::Value,
) -> Result<T, crate::process::ProcessError> {
    let object = payload
        .pointer("/data/object")
        .ok_or_else(|| crate::process::ProcessError::Poison("event has no data.object".into()))?;
    decode(object)
}

/// A Stripe object decoded as `T`: an event's `data.object`, or the same object
/// retrieved from the API (a refetch takes exactly the webhook's path).
pub fn decode<T: serde::de::DeserializeOwned>(
    object: &serde_json::Value,
) -> Result<T, crate::process::ProcessError> {
    T::deserialize(object).map_err(|e| {
        crate::process::ProcessError::Poison(format!("cannot decode data.object: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> serde_json::Value {
        let path = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../../tests/fixtures/stripe")
        .join(path);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn decodes_both_subscription_shapes() {
        let old: Subscription = object(&fixture(
            "complete/customer.subscription.updated.stripe-sync-engine.json",
        ))
        .unwrap();
        assert_eq!(old.customer.id(), "cus_IhGfebO16cMIGN");
        assert_eq!(old.price().unwrap().id, "price_1IDQm5JDPojXS6LNM31hxKzp");
        assert_eq!(old.period(), (Some(1618980344), Some(1621572344)));

        let data = fixture("data-only/customer.subscription.updated.data-only.pay-rails.json");
        let new: Subscription = object(&serde_json::json!({ "data": data })).unwrap();
        assert_eq!(new.status, "canceled");
        assert_eq!(new.customer.id(), "cus_00000000000000");
    }

    #[test]
    fn decodes_a_subscription_checkout() {
        let data = fixture(
            "data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json",
        );
        let session: CheckoutSession = object(&serde_json::json!({ "data": data })).unwrap();
        assert_eq!(session.mode.as_deref(), Some("subscription"));
        assert_eq!(
            session.customer.as_ref().unwrap().id(),
            "cus_M5wW9RPFk9xNZ5"
        );
        assert_eq!(
            session.subscription.as_ref().unwrap().id(),
            "sub_1LNkeSKXBGcbgpbZ7jMqOPSi"
        );
        assert_eq!(session.user_id(), None);
        assert_eq!(session.email(), Some("chris@gorails.com"));
    }

    #[test]
    fn decodes_both_invoice_shapes() {
        let old: Invoice =
            object(&fixture("complete/invoice.paid.stripe-sync-engine.json")).unwrap();
        assert_eq!(old.subscription_id(), Some("sub_JsuPyCPhXWfZar"));
        assert_eq!(old.paid_at(), Some(1642649110));
        let data = fixture("data-only/invoice.payment_failed.data-only.pay-rails.json");
        let basil: Invoice = object(&serde_json::json!({ "data": data })).unwrap();
        assert_eq!(
            basil.subscription_id(),
            Some("sub_1234"),
            "from parent.subscription_details"
        );
        assert_eq!((basil.amount_due, basil.currency.as_str()), (24900, "usd"));
        assert_eq!(basil.attempted, Some(true));
    }

    #[test]
    fn an_undecodable_object_is_poison() {
        let payload = serde_json::json!({ "data": { "object": { "id": 5 } } });
        assert!(object::<Subscription>(&payload).unwrap_err().is_poison());
    }
}
