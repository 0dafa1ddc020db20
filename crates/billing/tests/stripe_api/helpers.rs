use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tollgate_billing::account::{Account, AccountConfig, Clock};
use tollgate_billing::checkout_limit::CheckoutLimit;
use tollgate_billing::db;
use tollgate_plans::Plans;
use tollgate_stripe::{SecretKey, StripeClient};
use tollgate_test_support::{RecordedRequest, StripeStandIn, TestDatabase, stripe_object};

pub const KEY: &str = "sk_test_tollgate_billing_api";
pub const SUCCESS_URL: &str = "https://app.test/billing/done?session={CHECKOUT_SESSION_ID}";
pub const CANCEL_URL: &str = "https://app.test/pricing";
pub const RETURN_URL: &str = "https://app.test/account";

/// A migrated database of its own, a Stripe stand-in, and a clock the test moves.
pub struct Harness {
    _db: TestDatabase,
    pub pool: PgPool,
    pub stand_in: StripeStandIn,
    pub plans: Arc<Plans>,
    now: Arc<Mutex<DateTime<Utc>>>,
}

pub fn plans_path() -> String {
    format!(
        "{}/config/plans.toml",
        tollgate_test_support::workspace_root().display()
    )
}

impl Harness {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        db::MIGRATOR.run(&pool).await.expect("migrations");
        let plans = Plans::load(Some(std::path::Path::new(&plans_path()))).unwrap();
        Self {
            _db: db,
            pool,
            stand_in: StripeStandIn::start().await,
            plans: Arc::new(plans),
            now: Arc::new(Mutex::new(
                Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 30).unwrap(),
            )),
        }
    }

    pub fn client(&self) -> StripeClient {
        StripeClient::new(
            &SecretKey::new(KEY).unwrap(),
            &self.stand_in.api_base(),
            Duration::from_secs(3),
        )
        .unwrap()
    }

    pub fn account(&self) -> Account {
        self.account_with(self.plans.clone())
    }

    pub fn account_with(&self, plans: Arc<Plans>) -> Account {
        let config = AccountConfig {
            success_url: SUCCESS_URL.into(),
            cancel_url: CANCEL_URL.into(),
            portal_return_url: RETURN_URL.into(),
            checkout_limit: CheckoutLimit::default(),
            idempotency_window: Duration::from_secs(600),
        };
        let now = self.now.clone();
        let clock: Clock = Arc::new(move || *now.lock().unwrap());
        Account::new(self.pool.clone(), plans, self.client(), config).with_clock(clock)
    }

    pub fn advance(&self, seconds: i64) {
        *self.now.lock().unwrap() += chrono::Duration::seconds(seconds);
    }

    /// A customer row linked to `user`, as a checkout webhook leaves it.
    pub async fn linked_customer(&self, stripe_customer: &str, user: &str) {
        sqlx::query(
            "INSERT INTO customers (stripe_customer_id, user_id, email) VALUES ($1, $2, $3)",
        )
        .bind(stripe_customer)
        .bind(user)
        .bind(format!("{user}@example.test"))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A stored subscription row, as a webhook snapshot leaves it.
    pub async fn stored_subscription(&self, id: &str, customer: &str, status: &str, price: &str) {
        sqlx::query(
            "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, tier,
                                        snapshot_created, snapshot_rank, snapshot_event_id)
             VALUES ($1, $2, $3, $4, $5, 1760000000, 8, 'evt_seed')",
        )
        .bind(id)
        .bind(customer)
        .bind(status)
        .bind(price)
        .bind(self.plans.tier_for_price(price))
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Requests other than the `GET`s of lists, in order.
    pub fn posts(&self) -> Vec<RecordedRequest> {
        self.stand_in
            .requests()
            .into_iter()
            .filter(|r| r.method == "POST")
            .collect()
    }
}

/// Stripe's example customer, made ours.
pub fn customer_object(id: &str, user: Option<&str>, email: &str, created: i64) -> Value {
    let mut customer = stripe_object("customer");
    customer["id"] = id.into();
    customer["email"] = email.into();
    customer["created"] = created.into();
    customer["discount"] = Value::Null;
    if let Some(user) = user {
        customer["metadata"] = serde_json::json!({ "user_id": user });
    }
    customer
}

/// Stripe's example Checkout Session, as Stripe answers its creation.
pub fn checkout_session(id: &str, mode: &str) -> Value {
    let mut session = stripe_object("checkout.session");
    session["id"] = id.into();
    session["mode"] = mode.into();
    session["url"] = format!("https://checkout.stripe.test/c/pay/{id}").into();
    session
}

/// Asserts the request carries our key, the pinned version and (for a POST) a key.
pub fn assert_stripe_headers(request: &RecordedRequest) {
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {KEY}").as_str()),
        "{} {}",
        request.method,
        request.path
    );
    assert_eq!(
        request.header("stripe-version"),
        Some(tollgate_stripe::api_version())
    );
    if request.method == "POST" {
        assert!(
            request
                .header("idempotency-key")
                .is_some_and(|k| k.starts_with("tollgate-")),
            "{} {} has no idempotency key",
            request.method,
            request.path
        );
    }
}
pub async fn audit_sources(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT trigger_source, new_status, COALESCE(new_tier, '') FROM access_audit ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Stripe's example event, made one of ours: `id` of `event_type` at `created` about
/// `object` (with `previous_attributes` when given).
pub fn stripe_event(
    id: &str,
    event_type: &str,
    created: i64,
    object: Value,
    previous: Option<Value>,
) -> Value {
    let mut event = stripe_object("event");
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = created.into();
    event["api_version"] = tollgate_stripe::api_version().into();
    event["data"] = serde_json::json!({ "object": object });
    if let Some(previous) = previous {
        event["data"]["previous_attributes"] = previous;
    }
    event
}

/// A reconciler on the harness's database and stand-in, with short waits and small pages.
pub fn reconciler(h: &Harness, page_size: u8) -> tollgate_billing::reconcile::Reconciler {
    let mut reconciler = tollgate_billing::reconcile::Reconciler::new(
        h.pool.clone(),
        h.plans.clone(),
        h.client(),
        tollgate_stripe::Refetcher::disabled(),
    );
    reconciler.backoff = tollgate_stripe::Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(20),
        attempts: 5,
    };
    reconciler.page_size = page_size;
    reconciler.retry_pause = Duration::from_millis(10);
    reconciler
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (access status, tier) of the customer.
pub async fn access(pool: &PgPool, stripe_customer: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT access_status, tier FROM customers WHERE stripe_customer_id = $1")
        .bind(stripe_customer)
        .fetch_one(pool)
        .await
        .unwrap()
}
