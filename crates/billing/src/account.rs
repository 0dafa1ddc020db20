//! What a customer does with their billing through Stripe: subscription and credit top-up
//! checkouts, the Customer Portal, and plan changes and cancellations.
//!
//! Each operation is one async function an HTTP handler calls with the signed-in user;
//! [`AccountError`] tells it what to answer ([`AccountError::status`], a stable
//! [`AccountError::code`]). The Stripe customer is created the first time a user needs
//! one and linked to the user in `customers` at once, so the webhooks that follow (the
//! checkout, the subscription) find it. Every POST carries an idempotency key derived from
//! the intent (or from the caller's own `Idempotency-Key`), so a retried click returns the
//! first session instead of a second one. State is never changed here: Stripe's webhooks
//! change it, through the same handlers as always.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tollgate_plans::{PackPrice, Plans};
use tollgate_runtime::config::{ConfigError, Env};
use tollgate_stripe::operations::{
    CancelNow, CheckoutMode, CheckoutParams, CustomerParams, ItemChange, LineItem, PortalParams,
    PriceData, ProductData, Proration, SubscriptionUpdate, WithMetadata,
};
use tollgate_stripe::{IdempotencyKey, Rejection, StripeApiError, StripeClient};

use crate::checkout_limit::{self, CheckoutLimit};
use crate::customers;
use crate::process::ProcessError;

/// Subscription statuses that still bill or may bill again: a user with one of these has
/// a subscription to change, and no second one is sold to them.
const LIVE_STATUSES: &[&str] = &["active", "trialing", "past_due", "unpaid", "paused"];

/// What the account operations read from the environment (README, "Configuration").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountConfig {
    /// `CHECKOUT_SUCCESS_URL`: where Stripe sends the customer after paying (may contain
    /// Stripe's `{CHECKOUT_SESSION_ID}` placeholder).
    pub success_url: String,
    /// `CHECKOUT_CANCEL_URL`: where Stripe sends a customer who gives up.
    pub cancel_url: String,
    /// `PORTAL_RETURN_URL`: where the Customer Portal's "back" link goes.
    pub portal_return_url: String,
    /// `CHECKOUT_RATE_LIMIT` (default 5) per `CHECKOUT_RATE_WINDOW_SECS` (default 60).
    pub checkout_limit: CheckoutLimit,
    /// `CHECKOUT_IDEMPOTENCY_WINDOW_SECS` (default 600): the same checkout asked for again
    /// within this bucket of time returns the same Stripe session.
    pub idempotency_window: Duration,
}

impl AccountConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let url = |name: &'static str| -> Result<String, ConfigError> {
            let url = env.required_string(name)?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::invalid(name, "must be an http(s) URL"));
            }
            Ok(url.trim().to_string())
        };
        let positive = |name: &'static str, default: u64| -> Result<u64, ConfigError> {
            let value: u64 = env.or(name, default)?;
            if value == 0 {
                return Err(ConfigError::invalid(name, "must be at least 1"));
            }
            Ok(value)
        };
        Ok(Self {
            success_url: url("CHECKOUT_SUCCESS_URL")?,
            cancel_url: url("CHECKOUT_CANCEL_URL")?,
            portal_return_url: url("PORTAL_RETURN_URL")?,
            checkout_limit: CheckoutLimit {
                max: u32::try_from(positive("CHECKOUT_RATE_LIMIT", 5)?)
                    .map_err(|e| ConfigError::invalid("CHECKOUT_RATE_LIMIT", e))?,
                window: Duration::from_secs(positive("CHECKOUT_RATE_WINDOW_SECS", 60)?),
            },
            idempotency_window: Duration::from_secs(positive(
                "CHECKOUT_IDEMPOTENCY_WINDOW_SECS",
                600,
            )?),
        })
    }
}

/// The signed-in user an operation is for (from the caller's authentication, never from
/// the request body).
#[derive(Debug, Clone, Copy)]
pub struct User<'a> {
    /// Our user id: `client_reference_id` and `metadata.user_id` at Stripe.
    pub id: &'a str,
    /// Given to Stripe when the customer is created (receipts, the portal).
    pub email: Option<&'a str>,
}

/// A Checkout Session to send the user to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    pub session_id: String,
    pub url: String,
    /// Unix seconds; Stripe's default is 24 hours after creation.
    pub expires_at: Option<i64>,
    pub stripe_customer_id: String,
}

/// A Customer Portal session to send the user to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    pub url: String,
    pub stripe_customer_id: String,
}

/// When a cancellation takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAt {
    /// At the end of the paid period (`cancel_at_period_end=true`); access stays until then.
    PeriodEnd,
    /// Now (`DELETE /v1/subscriptions/{id}`); access ends when Stripe's
    /// `customer.subscription.deleted` arrives.
    Now { prorate: bool, invoice_now: bool },
}

/// A subscription as Stripe has it right after a change (the webhook that follows updates
/// billing's copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub id: String,
    pub status: String,
    pub price_id: Option<String>,
    /// The plan key of that price, when the plans file sells it.
    pub plan: Option<String>,
    pub cancel_at_period_end: bool,
}

/// Why an account operation did not happen. [`AccountError::status`] is the HTTP status to
/// answer and [`AccountError::code`] a stable machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid user: {0}")]
    InvalidUser(&'static str),
    #[error("unknown plan `{0}`")]
    UnknownPlan(String),
    #[error("no credit pack of {0} credits")]
    UnknownCreditPack(u64),
    #[error("this user has no Stripe customer")]
    NoSuchCustomer,
    #[error("this user's Stripe customer was deleted; an operator must link a new one")]
    CustomerDeleted,
    #[error("this user has no live subscription")]
    NoSubscription,
    #[error("this user has several live subscriptions; name the one to change")]
    SeveralSubscriptions,
    #[error("already subscribed: change the plan or use the portal")]
    AlreadySubscribed,
    #[error("the subscription is already on plan `{0}`")]
    AlreadyOnPlan(String),
    #[error("the subscription has {0} items; only single-price subscriptions are changed here")]
    UnsupportedSubscription(usize),
    #[error("too many checkouts; try again in {} s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("Stripe refused the request: {0}")]
    StripeRejected(Rejection),
    #[error("Stripe is unavailable: {0}")]
    StripeUnavailable(String),
    #[error("billing state conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Database(String),
}

impl AccountError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidUser(_) | Self::UnknownPlan(_) | Self::UnknownCreditPack(_) => 400,
            Self::NoSuchCustomer | Self::NoSubscription => 404,
            Self::CustomerDeleted
            | Self::SeveralSubscriptions
            | Self::AlreadySubscribed
            | Self::AlreadyOnPlan(_)
            | Self::UnsupportedSubscription(_)
            | Self::Conflict(_) => 409,
            Self::RateLimited { .. } => 429,
            // A declined card is the customer's to fix; a reused idempotency key with other
            // parameters is the caller's. Anything else Stripe refuses is our request's fault.
            Self::StripeRejected(r) if r.error_type == "card_error" => 402,
            Self::StripeRejected(r) if r.error_type == "idempotency_error" => 409,
            Self::StripeRejected(_) => 502,
            Self::StripeUnavailable(_) | Self::Database(_) => 503,
        }
    }

    /// A stable code for API bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUser(_) => "invalid_user",
            Self::UnknownPlan(_) => "unknown_plan",
            Self::UnknownCreditPack(_) => "unknown_credit_pack",
            Self::NoSuchCustomer => "no_such_customer",
            Self::CustomerDeleted => "customer_deleted",
            Self::NoSubscription => "no_subscription",
            Self::SeveralSubscriptions => "several_subscriptions",
            Self::AlreadySubscribed => "already_subscribed",
            Self::AlreadyOnPlan(_) => "already_on_plan",
            Self::UnsupportedSubscription(_) => "unsupported_subscription",
            Self::RateLimited { .. } => "rate_limited",
            Self::StripeRejected(_) => "stripe_rejected",
            Self::StripeUnavailable(_) => "stripe_unavailable",
            Self::Conflict(_) => "conflict",
            Self::Database(_) => "database_unavailable",
        }
    }

    /// For a `Retry-After` header.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::StripeUnavailable(_) | Self::Database(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for AccountError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error.to_string())
    }
}

impl From<ProcessError> for AccountError {
    fn from(error: ProcessError) -> Self {
        match error {
            ProcessError::Poison(message) => Self::Conflict(message),
            ProcessError::Transient(message) => Self::Database(message),
        }
    }
}

impl From<StripeApiError> for AccountError {
    fn from(error: StripeApiError) -> Self {
        match error {
            StripeApiError::Rejected(r)
                if r.code.as_deref() == Some("resource_missing")
                    && r.param.as_deref() == Some("customer") =>
            {
                Self::NoSuchCustomer
            }
            StripeApiError::Rejected(rejection) => Self::StripeRejected(rejection),
            StripeApiError::NotFound(path) => Self::StripeRejected(Rejection {
                status: 404,
                error_type: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                param: None,
                message: format!("Stripe has no {path}"),
            }),
            other => Self::StripeUnavailable(other.to_string()),
        }
    }
}

/// The wall clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The account operations, for one Stripe account and database. Cheap to clone.
#[derive(Clone)]
pub struct Account {
    pool: PgPool,
    plans: Arc<Plans>,
    stripe: StripeClient,
    config: AccountConfig,
    clock: Clock,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Account {
    pub fn new(
        pool: PgPool,
        plans: Arc<Plans>,
        stripe: StripeClient,
        config: AccountConfig,
    ) -> Self {
        Self {
            pool,
            plans,
            stripe,
            config,
            clock: Arc::new(Utc::now),
        }
    }

    /// From the environment: `STRIPE_SECRET_KEY` (required here), `STRIPE_API_BASE`,
    /// `STRIPE_TIMEOUT_MS`, and [`AccountConfig::from_env`]'s variables.
    pub fn from_env(pool: PgPool, plans: Arc<Plans>, env: &Env) -> Result<Self, ConfigError> {
        let stripe = tollgate_stripe::StripeConfig::from_env(env)?;
        let client = StripeClient::from_config(&stripe)
            .map_err(|e| ConfigError::invalid("STRIPE_API_BASE", e))?
            .ok_or(ConfigError::Missing {
                name: "STRIPE_SECRET_KEY",
            })?;
        Ok(Self::new(
            pool,
            plans,
            client,
            AccountConfig::from_env(env)?,
        ))
    }

    /// Replaces the wall clock (tests: the rate limit's window, idempotency buckets).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The user's Stripe customer id: the stored one, else a new Stripe customer (email,
    /// `metadata[user_id]`) linked to the user before this returns. The creation's
    /// idempotency key is the user's alone, so two racing first checkouts (or a retry
    /// after a lost answer) get the same customer rather than two.
    pub async fn ensure_customer(&self, user: User<'_>) -> Result<String, AccountError> {
        validate(user)?;
        if let Some(id) = self.stored_customer(user.id).await? {
            return Ok(id);
        }
        let mut metadata = BTreeMap::new();
        metadata.insert("user_id".to_string(), user.id.to_string());
        let customer = self
            .stripe
            .create_customer(
                &CustomerParams {
                    email: user.email.map(str::to_string),
                    metadata,
                },
                &IdempotencyKey::derive("customer", &[user.id]),
            )
            .await?;
        let mut tx = crate::db::Tx::begin(&self.pool).await?;
        // A row of the user without a Stripe customer (made by an operator, say) gets this
        // one, rather than a second row for the same user.
        sqlx::query(
            "UPDATE customers SET stripe_customer_id = $2, updated_at = now()
              WHERE user_id = $1 AND stripe_customer_id IS NULL
                AND NOT EXISTS (SELECT 1 FROM customers WHERE stripe_customer_id = $2)",
        )
        .bind(user.id)
        .bind(&customer.id)
        .execute(&mut *tx)
        .await?;
        let customer_id = customers::lock_or_create(&mut tx, &customer.id).await?;
        customers::link_user(&mut tx, customer_id, Some(user.id), user.email).await?;
        tx.commit().await?;
        tracing::info!(
            stripe_customer = customer.id,
            "Stripe customer created and linked"
        );
        Ok(customer.id)
    }

    /// A subscription-mode Checkout Session for plan `plan` (a price key of the plans
    /// file). Refused when the user already has a live subscription (they change plans
    /// instead) and past the per-user checkout limit.
    pub async fn subscription_checkout(
        &self,
        user: User<'_>,
        plan: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Checkout, AccountError> {
        let result = async {
            validate(user)?;
            let price = self
                .plans
                .price_by_key(plan)
                .ok_or_else(|| AccountError::UnknownPlan(plan.to_string()))?;
            if !self.live_subscriptions(user.id).await?.is_empty() {
                return Err(AccountError::AlreadySubscribed);
            }
            self.take_checkout_slot(user.id).await?;
            let customer = self.ensure_customer(user).await?;
            let metadata = user_metadata(user.id);
            let params = CheckoutParams {
                mode: CheckoutMode::Subscription,
                customer: customer.clone(),
                client_reference_id: user.id.to_string(),
                success_url: self.config.success_url.clone(),
                cancel_url: self.config.cancel_url.clone(),
                line_items: vec![LineItem {
                    price: Some(price.id.clone()),
                    price_data: None,
                    quantity: 1,
                }],
                metadata: metadata.clone(),
                subscription_data: Some(WithMetadata { metadata }),
                payment_intent_data: None,
            };
            self.create_checkout(user, params, idempotency_key, customer)
                .await
        }
        .await;
        count("subscription_checkout", &result);
        result
    }

    /// A payment-mode Checkout Session for the credit pack of `credits` credits; billing
    /// adds them when Stripe reports the payment (`metadata[credits]`).
    pub async fn topup_checkout(
        &self,
        user: User<'_>,
        credits: u64,
        idempotency_key: Option<&str>,
    ) -> Result<Checkout, AccountError> {
        let result = async {
            validate(user)?;
            let pack = self
                .plans
                .credit_pack(credits)
                .ok_or(AccountError::UnknownCreditPack(credits))?;
            self.take_checkout_slot(user.id).await?;
            let customer = self.ensure_customer(user).await?;
            let line_item = match &pack.price {
                PackPrice::Stripe(price) => LineItem {
                    price: Some(price.clone()),
                    price_data: None,
                    quantity: 1,
                },
                PackPrice::Amount { amount, currency } => LineItem {
                    price: None,
                    price_data: Some(PriceData {
                        currency: currency.clone(),
                        unit_amount: *amount,
                        product_data: ProductData {
                            name: format!("{} credits", thousands(pack.credits)),
                        },
                    }),
                    quantity: 1,
                },
            };
            let mut metadata = user_metadata(user.id);
            metadata.insert("credits".into(), pack.credits.to_string());
            let params = CheckoutParams {
                mode: CheckoutMode::Payment,
                customer: customer.clone(),
                client_reference_id: user.id.to_string(),
                success_url: self.config.success_url.clone(),
                cancel_url: self.config.cancel_url.clone(),
                line_items: vec![line_item],
                metadata: metadata.clone(),
                subscription_data: None,
                payment_intent_data: Some(WithMetadata { metadata }),
            };
            self.create_checkout(user, params, idempotency_key, customer)
                .await
        }
        .await;
        count("topup_checkout", &result);
        result
    }

    /// A Customer Portal session for a user who has a Stripe customer.
    pub async fn portal(
        &self,
        user_id: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Portal, AccountError> {
        let result = async {
            validate(User {
                id: user_id,
                email: None,
            })?;
            let customer = self
                .stored_customer(user_id)
                .await?
                .ok_or(AccountError::NoSuchCustomer)?;
            // Portal links are short-lived: a repeat within the minute gets the same one,
            // a later visit a fresh one.
            let bucket = self.bucket(self.config.idempotency_window.min(Duration::from_secs(60)));
            let key = key_for(
                "portal",
                user_id,
                idempotency_key,
                &[user_id, &customer, &bucket],
            );
            let session = self
                .stripe
                .create_portal_session(
                    &PortalParams {
                        customer: customer.clone(),
                        return_url: self.config.portal_return_url.clone(),
                    },
                    &key,
                )
                .await?;
            Ok(Portal {
                url: session.url,
                stripe_customer_id: customer,
            })
        }
        .await;
        count("portal", &result);
        result
    }

    /// Moves the user's subscription to plan `plan` (upgrade or downgrade), prorated as
    /// `proration` says. `subscription` names one when the user has several.
    pub async fn change_plan(
        &self,
        user_id: &str,
        plan: &str,
        proration: Proration,
        subscription: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<SubscriptionState, AccountError> {
        let result = async {
            let price = self
                .plans
                .price_by_key(plan)
                .ok_or_else(|| AccountError::UnknownPlan(plan.to_string()))?;
            let current = self.current_subscription(user_id, subscription).await?;
            if current.price_id.as_deref() == Some(price.id.as_str()) {
                return Err(AccountError::AlreadyOnPlan(plan.to_string()));
            }
            let proration_name = match proration {
                Proration::CreateProrations => "create_prorations",
                Proration::AlwaysInvoice => "always_invoice",
                Proration::None => "none",
            };
            let key = key_for(
                "subscription-change",
                user_id,
                idempotency_key,
                &[
                    &current.id,
                    &current.item_id,
                    current.price_id.as_deref().unwrap_or(""),
                    &price.id,
                    proration_name,
                    &self.bucket(self.config.idempotency_window),
                ],
            );
            let update = SubscriptionUpdate {
                items: vec![ItemChange {
                    id: current.item_id.clone(),
                    price: price.id.clone(),
                }],
                proration_behavior: Some(proration),
                cancel_at_period_end: None,
            };
            let changed = self
                .stripe
                .update_subscription(&current.id, &update, &key)
                .await?;
            self.state_of(&changed)
        }
        .await;
        count("change_plan", &result);
        result
    }

    /// Cancels the user's subscription at the end of its period, or now.
    pub async fn cancel(
        &self,
        user_id: &str,
        at: CancelAt,
        subscription: Option<&str>,
        idempotency_key: Option<&str>,
    ) -> Result<SubscriptionState, AccountError> {
        let result = async {
            let current = self.current_subscription(user_id, subscription).await?;
            let cancelled = match at {
                CancelAt::PeriodEnd if current.cancel_at_period_end => {
                    // Already cancelling: nothing to ask of Stripe.
                    return self.state_of(&current.object);
                }
                CancelAt::PeriodEnd => {
                    let key = key_for(
                        "subscription-cancel",
                        user_id,
                        idempotency_key,
                        &[&current.id, &self.bucket(self.config.idempotency_window)],
                    );
                    let update = SubscriptionUpdate {
                        cancel_at_period_end: Some(true),
                        ..Default::default()
                    };
                    self.stripe
                        .update_subscription(&current.id, &update, &key)
                        .await?
                }
                CancelAt::Now {
                    prorate,
                    invoice_now,
                } => {
                    self.stripe
                        .cancel_subscription(
                            &current.id,
                            &CancelNow {
                                invoice_now,
                                prorate,
                            },
                        )
                        .await?
                }
            };
            self.state_of(&cancelled)
        }
        .await;
        count(
            match at {
                CancelAt::PeriodEnd => "cancel_at_period_end",
                CancelAt::Now { .. } => "cancel_now",
            },
            &result,
        );
        result
    }

    async fn create_checkout(
        &self,
        user: User<'_>,
        params: CheckoutParams,
        idempotency_key: Option<&str>,
        customer: String,
    ) -> Result<Checkout, AccountError> {
        // The whole request is the intent: the same user asking for the same thing within
        // the bucket gets the same session; anything different (another price, new URLs
        // after a deploy) is a new request, never Stripe's "same key, other parameters".
        let intent = serde_json::to_string(&params).unwrap_or_default();
        let key = key_for(
            "checkout",
            user.id,
            idempotency_key,
            &[&intent, &self.bucket(self.config.idempotency_window)],
        );
        let session = self.stripe.create_checkout_session(&params, &key).await?;
        let url = session.url.ok_or_else(|| {
            AccountError::StripeUnavailable(format!("checkout session {} has no url", session.id))
        })?;
        Ok(Checkout {
            session_id: session.id,
            url,
            expires_at: session.expires_at,
            stripe_customer_id: customer,
        })
    }

    async fn take_checkout_slot(&self, user_id: &str) -> Result<(), AccountError> {
        match checkout_limit::acquire(
            &self.pool,
            user_id,
            (self.clock)(),
            self.config.checkout_limit,
        )
        .await?
        {
            Ok(()) => Ok(()),
            Err(retry_after) => Err(AccountError::RateLimited { retry_after }),
        }
    }

    /// The stored Stripe customer of the user; an error if it was deleted.
    async fn stored_customer(&self, user_id: &str) -> Result<Option<String>, AccountError> {
        let row: Option<(Option<String>, bool)> = sqlx::query_as(
            "SELECT stripe_customer_id, deleted_at IS NOT NULL FROM customers WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some((_, true)) => Err(AccountError::CustomerDeleted),
            Some((id, false)) => Ok(id),
            None => Ok(None),
        }
    }

    /// The user's live subscriptions (ids), from billing's copy.
    async fn live_subscriptions(&self, user_id: &str) -> Result<Vec<String>, AccountError> {
        Ok(sqlx::query_scalar(
            "SELECT s.stripe_subscription_id FROM subscriptions s
               JOIN customers c ON c.stripe_customer_id = s.stripe_customer_id
              WHERE c.user_id = $1 AND s.status = ANY($2)
              ORDER BY s.stripe_subscription_id",
        )
        .bind(user_id)
        .bind(LIVE_STATUSES)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The subscription to change, as Stripe has it now (its item id and price are not
    /// stored, and the change must start from Stripe's state, not a copy that may lag).
    async fn current_subscription(
        &self,
        user_id: &str,
        requested: Option<&str>,
    ) -> Result<Current, AccountError> {
        validate(User {
            id: user_id,
            email: None,
        })?;
        let customer = self
            .stored_customer(user_id)
            .await?
            .ok_or(AccountError::NoSubscription)?;
        let live = self.live_subscriptions(user_id).await?;
        let id = match (requested, live.as_slice()) {
            // Only the user's own: anything else is "not found", whoever it belongs to.
            (Some(requested), live) if live.iter().any(|id| id == requested) => requested,
            (Some(_), _) | (None, []) => return Err(AccountError::NoSubscription),
            (None, [only]) => only.as_str(),
            (None, _) => return Err(AccountError::SeveralSubscriptions),
        };
        let object = match self.stripe.retrieve_subscription(id).await {
            Err(StripeApiError::NotFound(_)) => return Err(AccountError::NoSubscription),
            other => other?,
        };
        let subscription: crate::stripe::Subscription = crate::stripe::decode(&object)
            .map_err(|e| AccountError::StripeUnavailable(e.to_string()))?;
        if subscription.customer.id() != customer
            || !LIVE_STATUSES.contains(&subscription.status.as_str())
        {
            return Err(AccountError::NoSubscription);
        }
        let items = object["items"]["data"].as_array().map_or(0, Vec::len);
        let item_id = match object.pointer("/items/data/0/id").and_then(|v| v.as_str()) {
            Some(item) if items == 1 => item.to_string(),
            _ => return Err(AccountError::UnsupportedSubscription(items)),
        };
        Ok(Current {
            id: subscription.id.clone(),
            item_id,
            price_id: subscription.price().map(|p| p.id.clone()),
            cancel_at_period_end: subscription.cancel_at_period_end.unwrap_or(false),
            object,
        })
    }

    fn state_of(&self, object: &serde_json::Value) -> Result<SubscriptionState, AccountError> {
        let subscription: crate::stripe::Subscription = crate::stripe::decode(object)
            .map_err(|e| AccountError::StripeUnavailable(e.to_string()))?;
        let price_id = subscription.price().map(|p| p.id.clone());
        let plan = price_id.as_deref().and_then(|id| {
            self.plans
                .prices_for_sale()
                .find(|p| p.id == id)
                .and_then(|p| p.key.clone())
        });
        Ok(SubscriptionState {
            id: subscription.id,
            status: subscription.status,
            price_id,
            plan,
            cancel_at_period_end: subscription.cancel_at_period_end.unwrap_or(false),
        })
    }

    /// The current bucket of `window` (an idempotency key part).
    fn bucket(&self, window: Duration) -> String {
        let seconds = i64::try_from(window.as_secs().max(1)).unwrap_or(i64::MAX);
        (self.clock)().timestamp().div_euclid(seconds).to_string()
    }
}

/// A subscription about to be changed.
struct Current {
    id: String,
    item_id: String,
    price_id: Option<String>,
    cancel_at_period_end: bool,
    object: serde_json::Value,
}

/// The `Idempotency-Key` of an operation: the caller's own key (namespaced by user, so
/// two users' keys never meet), else one derived from the intent.
fn key_for(
    operation: &str,
    user_id: &str,
    caller: Option<&str>,
    intent: &[&str],
) -> IdempotencyKey {
    match caller {
        Some(caller) => IdempotencyKey::derive(operation, &[user_id, "caller", caller]),
        None => IdempotencyKey::derive(operation, intent),
    }
}

fn validate(user: User<'_>) -> Result<(), AccountError> {
    // Stripe's client_reference_id takes up to 200 characters; metadata values 500.
    if user.id.trim().is_empty() || user.id.trim() != user.id {
        return Err(AccountError::InvalidUser(
            "the user id is empty or has surrounding spaces",
        ));
    }
    if user.id.chars().count() > 200 || user.id.chars().any(char::is_control) {
        return Err(AccountError::InvalidUser(
            "the user id is longer than 200 characters or has control characters",
        ));
    }
    if let Some(email) = user.email
        && (email.len() > 512 || !email.contains('@') || email.chars().any(char::is_control))
    {
        return Err(AccountError::InvalidUser("the email is not an address"));
    }
    Ok(())
}

fn user_metadata(user_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("user_id".to_string(), user_id.to_string())])
}

/// 10000 → "10,000".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn count<T>(operation: &'static str, result: &Result<T, AccountError>) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(error) => error.code(),
    };
    metrics::counter!("tollgate_billing_account_operations_total",
                      "operation" => operation, "outcome" => outcome)
    .increment(1);
    if let Err(error) = result
        && error.status() >= 500
    {
        tracing::warn!(operation, %error, "account operation failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(500), "500");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10000), "10,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn users_are_validated() {
        let ok = User {
            id: "user_1",
            email: Some("a@b.test"),
        };
        assert!(validate(ok).is_ok());
        for id in ["", " u", "u\n", &"x".repeat(201)] {
            assert!(validate(User { id, email: None }).is_err(), "{id:?}");
        }
        assert!(
            validate(User {
                id: "u",
                email: Some("not an address")
            })
            .is_err()
        );
    }

    #[test]
    fn errors_map_to_statuses_and_stable_codes() {
        let rejection = |error_type: &str| Rejection {
            status: 400,
            error_type: error_type.into(),
            code: None,
            param: None,
            message: "m".into(),
        };
        let cases = [
            (AccountError::UnknownPlan("x".into()), 400, "unknown_plan"),
            (AccountError::NoSuchCustomer, 404, "no_such_customer"),
            (AccountError::AlreadySubscribed, 409, "already_subscribed"),
            (
                AccountError::RateLimited {
                    retry_after: Duration::from_secs(3),
                },
                429,
                "rate_limited",
            ),
            (
                AccountError::StripeRejected(rejection("card_error")),
                402,
                "stripe_rejected",
            ),
            (
                AccountError::StripeRejected(rejection("idempotency_error")),
                409,
                "stripe_rejected",
            ),
            (
                AccountError::StripeRejected(rejection("invalid_request_error")),
                502,
                "stripe_rejected",
            ),
            (
                AccountError::StripeUnavailable("down".into()),
                503,
                "stripe_unavailable",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!((error.status(), error.code()), (status, code), "{error}");
        }
        let missing_customer = AccountError::from(StripeApiError::Rejected(Rejection {
            code: Some("resource_missing".into()),
            param: Some("customer".into()),
            ..rejection("invalid_request_error")
        }));
        assert!(matches!(missing_customer, AccountError::NoSuchCustomer));
        assert!(matches!(
            AccountError::from(StripeApiError::RateLimited),
            AccountError::StripeUnavailable(_)
        ));
    }

    #[test]
    fn config_needs_the_urls_and_reads_the_limits() {
        let urls = [
            (
                "CHECKOUT_SUCCESS_URL",
                "https://app.test/ok?s={CHECKOUT_SESSION_ID}",
            ),
            ("CHECKOUT_CANCEL_URL", "https://app.test/pricing"),
            ("PORTAL_RETURN_URL", "https://app.test/account"),
        ];
        let config = AccountConfig::from_env(&Env::from_pairs(urls)).unwrap();
        assert_eq!(config.checkout_limit, CheckoutLimit::default());
        assert_eq!(config.idempotency_window, Duration::from_secs(600));
        let missing = AccountConfig::from_env(&Env::from_pairs(urls[..2].to_vec())).unwrap_err();
        assert_eq!(
            missing,
            ConfigError::Missing {
                name: "PORTAL_RETURN_URL"
            }
        );
        let mut bad = urls.to_vec();
        bad.push(("CHECKOUT_RATE_LIMIT", "0"));
        assert!(AccountConfig::from_env(&Env::from_pairs(bad)).is_err());
        let mut bad = urls.to_vec();
        bad[0].1 = "app.test/ok";
        assert!(AccountConfig::from_env(&Env::from_pairs(bad)).is_err());
    }
}
