//! The Stripe API client: async-stripe's hyper client, asked for raw JSON.
//!
//! Objects come back as `serde_json::Value`, not as async-stripe's typed structs: billing
//! decodes every Stripe object with its own narrow, version-tolerant structs, and a
//! refetched object must take exactly the path a webhook snapshot takes. async-stripe's
//! request builder (`RequestBuilder` + `customize`) sends the request with the client's
//! authentication, `Stripe-Version` and timeout; its response is read as a generic JSON
//! value and handed on unchanged. The typed request crates (`async-stripe-billing`, ...)
//! are left out: they would add minutes of build for structs billing does not use.

use std::time::Duration;

use stripe::{Client, ClientBuilder, StripeError};
use stripe_client_core::{RequestBuilder, RequestStrategy, StripeMethod};

use crate::config::{SecretKey, StripeConfig};
use crate::operations::IdempotencyKey;

/// The Stripe API version every request is made with (`Stripe-Version`): the one this
/// async-stripe release is generated from.
pub fn api_version() -> &'static str {
    static VERSION: stripe_client_core::ApiVersion = stripe_client_core::VERSION;
    VERSION.as_str()
}

/// The kinds of object that can be retrieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    Subscription,
    Invoice,
}

impl ObjectKind {
    /// Stripe's name for the object (`"subscription"`), also the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscription => "subscription",
            Self::Invoice => "invoice",
        }
    }

    /// The collection path under `/v1`.
    fn collection(self) -> &'static str {
        match self {
            Self::Subscription => "subscriptions",
            Self::Invoice => "invoices",
        }
    }
}

/// Why a Stripe API call gave no object. Messages carry Stripe's error code and message,
/// never the key or a request body.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StripeApiError {
    #[error("no STRIPE_SECRET_KEY is configured")]
    NotConfigured,
    /// Stripe answered 404 for this path (`/v1/subscriptions/sub_...`).
    #[error("Stripe has no {0}")]
    NotFound(String),
    #[error("Stripe rate-limited the request (429)")]
    RateLimited,
    #[error("Stripe did not answer within {0:?}")]
    Timeout(Duration),
    /// Stripe refused the request (a 4xx other than 404 and 429) and said why: retrying
    /// the same request gives the same answer.
    #[error("Stripe refused the request: {0}")]
    Rejected(Rejection),
    /// A 5xx, a connection failure, or an answer that is not Stripe's: may pass later.
    #[error("{0}")]
    Other(String),
}

impl StripeApiError {
    /// Whether the same request may succeed later (429, timeout, 5xx, connection).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimited | Self::Timeout(_) | Self::Other(_))
    }
}

/// Stripe's reason for refusing a request (its `error` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// `invalid_request_error`, `card_error`, `idempotency_error`, `api_error`.
    pub error_type: String,
    /// `resource_missing`, `parameter_missing`, `card_declined`, ...
    pub code: Option<String>,
    /// The parameter at fault (`customer`, `line_items[0][price]`).
    pub param: Option<String>,
    /// Stripe's message, meant for developers (it may name ids; never the key). It may
    /// also quote what was sent, a customer's email address included ("Invalid email
    /// address: ..."): the caller may see it, logs never do.
    pub message: String,
}

/// Status, type, code and parameter: what an operator needs, and nothing Stripe quoted
/// back (so an error logged with `%` holds no personal data).
impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.error_type)?;
        if let Some(code) = &self.code {
            write!(f, " {code}")?;
        }
        if let Some(param) = &self.param {
            write!(f, " ({param})")?;
        }
        Ok(())
    }
}

/// A Stripe API client. Cheap to clone (the connection pool and headers are shared).
#[derive(Clone)]
pub struct StripeClient {
    inner: Client,
    timeout: Duration,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // async-stripe marks the Authorization header sensitive; print nothing of it anyway.
        f.debug_struct("StripeClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl StripeClient {
    /// A client for `config`, or `None` when no secret key is configured.
    pub fn from_config(config: &StripeConfig) -> Result<Option<Self>, StripeApiError> {
        config
            .secret_key
            .as_ref()
            .map(|key| Self::new(key, &config.api_base, config.timeout))
            .transpose()
    }

    pub fn new(key: &SecretKey, api_base: &str, timeout: Duration) -> Result<Self, StripeApiError> {
        let inner = ClientBuilder::new(key.expose())
            .url(api_base)
            // One attempt, bounded: callers decide what a failure means (billing falls back).
            .timeout(timeout)
            .app_info(
                "tollgate",
                Some(env!("CARGO_PKG_VERSION").to_string()),
                None,
            )
            .build()
            .map_err(|e| StripeApiError::Other(format!("building the Stripe client: {e}")))?;
        Ok(Self { inner, timeout })
    }

    /// `GET /v1/subscriptions/{id}`, as Stripe's JSON.
    pub async fn retrieve_subscription(
        &self,
        id: &str,
    ) -> Result<serde_json::Value, StripeApiError> {
        self.retrieve(ObjectKind::Subscription, id).await
    }

    /// `GET /v1/invoices/{id}`, as Stripe's JSON.
    pub async fn retrieve_invoice(&self, id: &str) -> Result<serde_json::Value, StripeApiError> {
        self.retrieve(ObjectKind::Invoice, id).await
    }

    /// `GET /v1/{objects}/{id}`, as Stripe's JSON.
    pub async fn retrieve(
        &self,
        kind: ObjectKind,
        id: &str,
    ) -> Result<serde_json::Value, StripeApiError> {
        if !is_object_id(id) {
            return Err(StripeApiError::Other(format!(
                "{id:?} is not a Stripe {} id",
                kind.as_str()
            )));
        }
        let path = format!("/{}/{id}", kind.collection());
        self.send(RequestBuilder::new(StripeMethod::Get, path))
            .await
    }

    /// Sends one request and returns the response body as JSON (the building block for
    /// every GET and DELETE; POSTs go through [`StripeClient::send_idempotent`]).
    pub async fn send(&self, request: RequestBuilder) -> Result<serde_json::Value, StripeApiError> {
        self.send_with(request, RequestStrategy::Once).await
    }

    /// Sends one request with an `Idempotency-Key` header: Stripe answers a repeat of the
    /// same key (within 24 hours) with the first answer instead of acting twice.
    pub async fn send_idempotent(
        &self,
        request: RequestBuilder,
        key: &IdempotencyKey,
    ) -> Result<serde_json::Value, StripeApiError> {
        let key = stripe_client_core::IdempotencyKey::new(key.as_str())
            .map_err(|e| StripeApiError::Other(format!("idempotency key: {e}")))?;
        self.send_with(request, RequestStrategy::Idempotent(key))
            .await
    }

    async fn send_with(
        &self,
        request: RequestBuilder,
        strategy: RequestStrategy,
    ) -> Result<serde_json::Value, StripeApiError> {
        let path = format!("/v1{}", request.path);
        let value: miniserde::json::Value = request
            .customize()
            // One attempt: callers decide whether and when to try again.
            .request_strategy(strategy)
            .send(&self.inner)
            .await
            .map_err(|e| self.classify(e, path))?;
        // miniserde's value is a faithful JSON tree; re-reading it as serde_json's costs a
        // few microseconds on an object of a few kilobytes.
        serde_json::from_str(&miniserde::json::to_string(&value))
            .map_err(|e| StripeApiError::Other(format!("Stripe answered with unusable JSON: {e}")))
    }

    fn classify(&self, error: StripeError, path: String) -> StripeApiError {
        match error {
            StripeError::Stripe(_, 429) => StripeApiError::RateLimited,
            StripeError::Stripe(_, 404) => StripeApiError::NotFound(path),
            StripeError::Stripe(error, status) if (400..500).contains(&status) => {
                StripeApiError::Rejected(Rejection {
                    status,
                    error_type: error.type_.as_str().to_string(),
                    code: error.code.as_ref().map(|c| c.as_str().to_string()),
                    param: error.param.clone(),
                    message: error.message.clone().unwrap_or_default(),
                })
            }
            StripeError::Stripe(error, status) => {
                let code = error.code.as_ref().map_or("", |c| c.as_str());
                let message = error.message.as_deref().unwrap_or("");
                StripeApiError::Other(format!(
                    "{status} {} {code}: {message}",
                    error.type_.as_str()
                ))
            }
            StripeError::Timeout => StripeApiError::Timeout(self.timeout),
            // A non-2xx without a Stripe error body (a proxy's 502 page), an unreadable 2xx,
            // or a connection failure.
            StripeError::JSONDeserialize(message) => {
                StripeApiError::Other(format!("unexpected response from Stripe: {message}"))
            }
            StripeError::ClientError(message) | StripeError::ConfigError(message) => {
                StripeApiError::Other(format!("calling Stripe: {message}"))
            }
        }
    }
}

/// Stripe ids are ASCII letters, digits and underscores (`sub_1Pgc6r...`); anything else
/// never reaches a URL path.
pub(crate) fn is_object_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_stripe_shaped_ids_reach_a_path() {
        assert!(is_object_id("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw"));
        assert!(is_object_id("in_1234"));
        for bad in ["", "sub/../customers", "sub_1?expand=x", "sub 1", "süb"] {
            assert!(!is_object_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_api_version_is_the_pinned_release() {
        assert!(api_version().starts_with("20"), "{}", api_version());
    }
}
