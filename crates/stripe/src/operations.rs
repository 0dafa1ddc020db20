//! Typed Stripe operations: customers, Checkout and Customer Portal sessions, subscription
//! changes and cancellation, and paged lists.
//!
//! Each is one request through async-stripe's client (so it carries the client's
//! `Authorization`, `Stripe-Version`, user agent and timeout), with the parameters as typed
//! structs that async-stripe's own form encoder writes the way Stripe reads them
//! (`line_items[0][price]=...&metadata[user_id]=...`). Every POST carries an
//! [`IdempotencyKey`]; the caller derives it from its intent, so a retry of the same intent
//! gets Stripe's first answer instead of a second object.
//!
//! Answers come back as small typed views (what callers need from them) or, for
//! subscriptions and list pages, as Stripe's raw JSON, which billing decodes with the same
//! narrow structs it uses for webhook snapshots.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use stripe_client_core::{RequestBuilder, StripeMethod};

use crate::client::{StripeApiError, StripeClient, is_object_id};

/// An `Idempotency-Key` header value.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// `tollgate-{operation}-{32 hex digits}`: SHA-256 over the parts, so the same intent
    /// always gives the same key, different intents never share one, and no part (a user
    /// id, an email) can be read back from Stripe's request logs.
    pub fn derive(operation: &str, parts: &[&str]) -> Self {
        let mut hash = Sha256::new();
        hash.update(operation.as_bytes());
        for part in parts {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        let digest = hex::encode(hash.finalize());
        Self(format!("tollgate-{operation}-{}", &digest[..32]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `POST /v1/customers`.
#[derive(Debug, Clone, Serialize)]
pub struct CustomerParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// A customer as Stripe returned it (what callers need of it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutMode {
    /// A recurring price: Stripe creates the subscription when the customer pays.
    Subscription,
    /// A one-off payment (credit packs).
    Payment,
}

/// `POST /v1/checkout/sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct CheckoutParams {
    pub mode: CheckoutMode,
    pub customer: String,
    pub client_reference_id: String,
    pub success_url: String,
    pub cancel_url: String,
    pub line_items: Vec<LineItem>,
    pub metadata: BTreeMap<String, String>,
    /// Subscription mode: metadata copied onto the subscription Stripe creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_data: Option<WithMetadata>,
    /// Payment mode: metadata copied onto the payment intent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent_data: Option<WithMetadata>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WithMetadata {
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LineItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_data: Option<PriceData>,
    pub quantity: u32,
}

/// An inline one-off price (`line_items[0][price_data][...]`).
#[derive(Debug, Clone, Serialize)]
pub struct PriceData {
    pub currency: String,
    /// Minor units.
    pub unit_amount: u64,
    pub product_data: ProductData,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProductData {
    pub name: String,
}

/// A Checkout Session as Stripe returned it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    /// Where to send the customer (absent only for embedded sessions, which we never create).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// `POST /v1/billing_portal/sessions`.
#[derive(Debug, Clone, Serialize)]
pub struct PortalParams {
    pub customer: String,
    pub return_url: String,
}

/// A Customer Portal session as Stripe returned it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortalSession {
    pub id: String,
    pub url: String,
}

/// `proration_behavior` of a subscription change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Proration {
    /// Credit the unused time and charge the new price's remainder on the next invoice.
    #[default]
    CreateProrations,
    /// The same prorations, invoiced and charged at once.
    AlwaysInvoice,
    /// No proration: the new price applies from the next period.
    None,
}

/// `POST /v1/subscriptions/{id}`: the fields Tollgate changes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SubscriptionUpdate {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proration_behavior: Option<Proration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_at_period_end: Option<bool>,
}

/// One subscription item moved to another price (`items[0][id]`, `items[0][price]`).
#[derive(Debug, Clone, Serialize)]
pub struct ItemChange {
    pub id: String,
    pub price: String,
}

/// `DELETE /v1/subscriptions/{id}` options.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CancelNow {
    /// Invoice pending usage and prorations now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invoice_now: bool,
    /// Credit the unused time (with `invoice_now`, on the final invoice).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub prorate: bool,
}

/// The collections Tollgate lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    Events,
    Customers,
    Subscriptions,
}

impl Collection {
    pub fn path(self) -> &'static str {
        match self {
            Self::Events => "/events",
            Self::Customers => "/customers",
            Self::Subscriptions => "/subscriptions",
        }
    }
}

/// Where a list page starts. Stripe lists newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// The newest objects.
    Newest,
    /// The page of objects just older than this one (`starting_after`).
    OlderThan(String),
    /// The page of objects just newer than this one (`ending_before`).
    NewerThan(String),
}

/// A list request's parameters (`GET /v1/{collection}?...`).
#[derive(Debug, Clone, Serialize)]
pub struct ListParams {
    /// 1 to 100.
    pub limit: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    starting_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ending_before: Option<String>,
    /// Events: up to 20 types (`types[0]=...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// Subscriptions: `all` includes canceled ones (Stripe leaves them out by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl ListParams {
    pub fn new(limit: u8, cursor: &Cursor) -> Self {
        let (starting_after, ending_before) = match cursor {
            Cursor::Newest => (None, None),
            Cursor::OlderThan(id) => (Some(id.clone()), None),
            Cursor::NewerThan(id) => (None, Some(id.clone())),
        };
        Self {
            limit: limit.clamp(1, 100),
            starting_after,
            ending_before,
            types: Vec::new(),
            status: None,
        }
    }
}

/// One page of a list: objects newest first, and whether the list goes on past it (in
/// the direction of the request: older for `starting_after`, newer for `ending_before`).
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    pub data: Vec<serde_json::Value>,
    pub has_more: bool,
}

/// How list calls wait and try again after a 429, a timeout, a 5xx or a connection
/// failure: exponential from `first`, at most `max` per wait, `attempts` requests in all,
/// each wait jittered down to as little as half so parallel runs spread out.
///
/// Stripe's 429s come without a `Retry-After` (its documentation asks for exponential
/// backoff), and async-stripe's client does not hand response headers on, so there is
/// no server hint to honour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    pub attempts: u32,
}

impl Default for Backoff {
    /// 1, 2, 4, 8, 16, 30, 30 s: eight requests in at most ~91 s.
    fn default() -> Self {
        Self {
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
            attempts: 8,
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (1 = the first retry), without jitter.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.first.saturating_mul(factor).min(self.max)
    }

    fn delay(&self, retry: u32) -> Duration {
        let ceiling = self.ceiling(retry);
        // A fresh std RandomState is randomly keyed: enough to spread retries.
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let fraction = 0.5 + (random % 1_000) as f64 / 2_000.0;
        ceiling.mul_f64(fraction)
    }
}

impl StripeClient {
    /// `POST /v1/customers`.
    pub async fn create_customer(
        &self,
        params: &CustomerParams,
        key: &IdempotencyKey,
    ) -> Result<Customer, StripeApiError> {
        let request = RequestBuilder::new(StripeMethod::Post, "/customers").form(params);
        decode("customer", self.send_idempotent(request, key).await?)
    }

    /// `POST /v1/checkout/sessions`.
    pub async fn create_checkout_session(
        &self,
        params: &CheckoutParams,
        key: &IdempotencyKey,
    ) -> Result<CheckoutSession, StripeApiError> {
        let request = RequestBuilder::new(StripeMethod::Post, "/checkout/sessions").form(params);
        decode(
            "checkout session",
            self.send_idempotent(request, key).await?,
        )
    }

    /// `POST /v1/billing_portal/sessions`.
    pub async fn create_portal_session(
        &self,
        params: &PortalParams,
        key: &IdempotencyKey,
    ) -> Result<PortalSession, StripeApiError> {
        let request =
            RequestBuilder::new(StripeMethod::Post, "/billing_portal/sessions").form(params);
        decode("portal session", self.send_idempotent(request, key).await?)
    }

    /// `POST /v1/subscriptions/{id}`: the subscription after the change, as Stripe's JSON.
    pub async fn update_subscription(
        &self,
        id: &str,
        update: &SubscriptionUpdate,
        key: &IdempotencyKey,
    ) -> Result<serde_json::Value, StripeApiError> {
        let path = subscription_path(id)?;
        let request = RequestBuilder::new(StripeMethod::Post, path).form(update);
        self.send_idempotent(request, key).await
    }

    /// `DELETE /v1/subscriptions/{id}`: cancels at once; the canceled subscription, as
    /// Stripe's JSON. (Stripe ignores idempotency keys on DELETE; cancelling twice is
    /// refused by Stripe, never applied twice.)
    pub async fn cancel_subscription(
        &self,
        id: &str,
        options: &CancelNow,
    ) -> Result<serde_json::Value, StripeApiError> {
        let path = subscription_path(id)?;
        let mut request = RequestBuilder::new(StripeMethod::Delete, path);
        if options.invoice_now || options.prorate {
            request = request.query(options);
        }
        self.send(request).await
    }

    /// One page of `GET /v1/{collection}`.
    pub async fn list_page(
        &self,
        collection: Collection,
        params: &ListParams,
    ) -> Result<Page, StripeApiError> {
        let request = RequestBuilder::new(StripeMethod::Get, collection.path()).query(params);
        let page = self.send(request).await?;
        serde_json::from_value(page).map_err(|e| {
            StripeApiError::Other(format!(
                "Stripe answered {} with something that is not a list: {e}",
                collection.path()
            ))
        })
    }

    /// [`StripeClient::list_page`], trying again after transient failures (429, timeout,
    /// 5xx, connection) as `backoff` says. Refusals (4xx) are returned at once.
    pub async fn list_page_with_backoff(
        &self,
        collection: Collection,
        params: &ListParams,
        backoff: &Backoff,
    ) -> Result<Page, StripeApiError> {
        let mut attempt = 1;
        loop {
            match self.list_page(collection, params).await {
                Err(error) if error.is_transient() && attempt < backoff.attempts.max(1) => {
                    let wait = backoff.delay(attempt);
                    tracing::warn!(
                        collection = collection.path(),
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        %error,
                        "Stripe list request failed; backing off"
                    );
                    let reason = if error == StripeApiError::RateLimited {
                        "rate_limited"
                    } else {
                        "failed"
                    };
                    metrics::counter!("tollgate_stripe_backoff_total", "reason" => reason)
                        .increment(1);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

fn subscription_path(id: &str) -> Result<String, StripeApiError> {
    if !is_object_id(id) {
        return Err(StripeApiError::Other(format!(
            "{id:?} is not a Stripe subscription id"
        )));
    }
    Ok(format!("/subscriptions/{id}"))
}

fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    value: serde_json::Value,
) -> Result<T, StripeApiError> {
    serde_json::from_value(value)
        .map_err(|e| StripeApiError::Other(format!("Stripe answered with an unusable {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(request: RequestBuilder) -> String {
        request.body.expect("a form body")
    }

    #[test]
    fn keys_are_stable_per_intent_and_differ_between_intents() {
        let a = IdempotencyKey::derive("checkout", &["user_1", "pro_monthly", "2937"]);
        assert_eq!(
            a,
            IdempotencyKey::derive("checkout", &["user_1", "pro_monthly", "2937"])
        );
        assert_ne!(
            a,
            IdempotencyKey::derive("checkout", &["user_1", "pro_monthly", "2938"])
        );
        assert_ne!(
            IdempotencyKey::derive("x", &["ab", "c"]),
            IdempotencyKey::derive("x", &["a", "bc"])
        );
        assert!(a.as_str().starts_with("tollgate-checkout-"));
        assert_eq!(a.as_str().len(), "tollgate-checkout-".len() + 32);
        assert!(!a.as_str().contains("user_1"));
    }

    #[test]
    fn a_checkout_is_form_encoded_with_stripe_s_nested_names() {
        let params = CheckoutParams {
            mode: CheckoutMode::Payment,
            customer: "cus_1".into(),
            client_reference_id: "user 1".into(),
            success_url: "https://app.test/ok?session={CHECKOUT_SESSION_ID}&a=b".into(),
            cancel_url: "https://app.test/cancel".into(),
            line_items: vec![LineItem {
                price: None,
                price_data: Some(PriceData {
                    currency: "usd".into(),
                    unit_amount: 900,
                    product_data: ProductData {
                        name: "1,000 credits".into(),
                    },
                }),
                quantity: 1,
            }],
            metadata: BTreeMap::from([
                ("credits".into(), "1000".into()),
                ("user_id".into(), "user 1".into()),
            ]),
            subscription_data: None,
            payment_intent_data: Some(WithMetadata {
                metadata: BTreeMap::from([("user_id".into(), "user 1".into())]),
            }),
        };
        let body =
            body(RequestBuilder::new(StripeMethod::Post, "/checkout/sessions").form(&params));
        assert_eq!(
            body,
            "mode=payment&customer=cus_1&client_reference_id=user+1\
             &success_url=https://app.test/ok?session%3D{CHECKOUT_SESSION_ID}%26a%3Db\
             &cancel_url=https://app.test/cancel\
             &line_items[0][price_data][currency]=usd&line_items[0][price_data][unit_amount]=900\
             &line_items[0][price_data][product_data][name]=1,000+credits&line_items[0][quantity]=1\
             &metadata[credits]=1000&metadata[user_id]=user+1\
             &payment_intent_data[metadata][user_id]=user+1"
        );
    }

    #[test]
    fn subscription_changes_and_lists_encode_as_stripe_expects() {
        let update = SubscriptionUpdate {
            items: vec![ItemChange {
                id: "si_1".into(),
                price: "price_2".into(),
            }],
            proration_behavior: Some(Proration::AlwaysInvoice),
            cancel_at_period_end: None,
        };
        assert_eq!(
            body(RequestBuilder::new(StripeMethod::Post, "/subscriptions/sub_1").form(&update)),
            "items[0][id]=si_1&items[0][price]=price_2&proration_behavior=always_invoice"
        );
        let cancel = SubscriptionUpdate {
            cancel_at_period_end: Some(true),
            ..Default::default()
        };
        assert_eq!(
            body(RequestBuilder::new(StripeMethod::Post, "/subscriptions/sub_1").form(&cancel)),
            "cancel_at_period_end=true"
        );
        let mut list = ListParams::new(100, &Cursor::NewerThan("evt_1".into()));
        list.types = vec!["invoice.paid".into(), "customer.updated".into()];
        let query = RequestBuilder::new(StripeMethod::Get, "/events")
            .query(&list)
            .query
            .unwrap();
        assert_eq!(
            query,
            "limit=100&ending_before=evt_1&types[0]=invoice.paid&types[1]=customer.updated"
        );
        let mut subscriptions = ListParams::new(250, &Cursor::OlderThan("sub_9".into()));
        subscriptions.status = Some("all".into());
        let query = RequestBuilder::new(StripeMethod::Get, "/subscriptions")
            .query(&subscriptions)
            .query
            .unwrap();
        assert_eq!(query, "limit=100&starting_after=sub_9&status=all");
    }

    #[test]
    fn backoff_doubles_to_its_bound_and_jitters_down_to_half() {
        let backoff = Backoff::default();
        let ceilings: Vec<u64> = (1..8).map(|r| backoff.ceiling(r).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30]);
        for retry in 1..10 {
            let delay = backoff.delay(retry);
            assert!(delay <= backoff.ceiling(retry), "{delay:?}");
            assert!(delay >= backoff.ceiling(retry) / 2, "{delay:?}");
        }
        assert_eq!(backoff.ceiling(1_000), backoff.max, "no overflow");
    }
}
