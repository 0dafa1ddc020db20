use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sqlx::PgPool;
use tollgate_billing::startup::Stopper;
use tollgate_billing::{Application, Config, process};
use tollgate_plans::Plans;
use tollgate_runtime::Env;
use tollgate_stripe::Refetcher;
use tollgate_test_support::{
    StripeStandIn, TestDatabase, TestVhost, invoice_object, stripe_object, subscription_object,
    unix_now,
};

pub const SERVICE_TOKEN: &str = "service-token-for-api-tests";
pub const ADMIN_TOKEN: &str = "admin-token-for-api-tests-0";
pub const ADMIN_ID: &str = "ops.alice";
pub const HS256_SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
pub const ORIGIN: &str = "https://app.example.test";
pub const SUCCESS_URL: &str = "https://app.example.test/billing/done";
pub const CANCEL_URL: &str = "https://app.example.test/pricing";
pub const RETURN_URL: &str = "https://app.example.test/account";

pub struct Options {
    pub rate_limit: u32,
    pub jwks: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate_limit: 10_000,
            jwks: false,
        }
    }
}

pub struct TestApi {
    _db: TestDatabase,
    _vhost: TestVhost,
    pub pool: PgPool,
    pub plans: Arc<Plans>,
    pub stand_in: StripeStandIn,
    pub base: String,
    pub http: reqwest::Client,
    stopper: Stopper,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

pub fn plans_path() -> String {
    format!(
        "{}/config/plans.toml",
        tollgate_test_support::workspace_root().display()
    )
}

pub fn fixture(relative: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{relative}",
        tollgate_test_support::workspace_root().display()
    ))
    .unwrap()
}

pub async fn spawn_api(options: Options) -> TestApi {
    let db = TestDatabase::create().await;
    let vhost = TestVhost::create();
    let stand_in = StripeStandIn::start().await;
    let mut env = vec![
        ("DATABASE_URL", db.url()),
        ("AMQP_URL", vhost.amqp_url()),
        ("BILLING_ADDR", "127.0.0.1:0".to_string()),
        ("BILLING_API_ADDR", "127.0.0.1:0".to_string()),
        ("DATABASE_MAX_CONNECTIONS", "4".to_string()),
        ("TOLLGATE_PLANS", plans_path()),
        ("STRIPE_SECRET_KEY", "sk_test_billing_api_tests".to_string()),
        ("STRIPE_API_BASE", stand_in.api_base()),
        ("CHECKOUT_SUCCESS_URL", SUCCESS_URL.to_string()),
        ("CHECKOUT_CANCEL_URL", CANCEL_URL.to_string()),
        ("PORTAL_RETURN_URL", RETURN_URL.to_string()),
        (
            "BILLING_API_SERVICE_TOKENS",
            format!("fulfillment:{SERVICE_TOKEN}"),
        ),
        (
            "BILLING_API_ADMIN_TOKENS",
            format!("{ADMIN_ID}:{ADMIN_TOKEN}"),
        ),
        ("BILLING_API_JWT_HS256_SECRET", HS256_SECRET.to_string()),
        ("BILLING_API_CORS_ORIGINS", ORIGIN.to_string()),
        ("BILLING_API_RATE_LIMIT", options.rate_limit.to_string()),
    ];
    if options.jwks {
        env.push((
            "BILLING_API_JWKS_URL",
            tollgate_test_support::serve_test_jwks().await,
        ));
    }
    let app = Application::build(Config::from_env(&Env::from_pairs(env)).unwrap())
        .await
        .expect("billing starts");
    assert!(app.wait_consuming(Duration::from_secs(20)).await);
    let port = app.api_port().expect("the API is configured");
    let pool = db.pool().await;
    let stopper = app.stopper();
    let task = tokio::spawn(app.run_until_stopped());
    TestApi {
        _db: db,
        _vhost: vhost,
        pool,
        plans: Arc::new(Plans::load(Some(std::path::Path::new(&plans_path()))).unwrap()),
        stand_in,
        base: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::new(),
        stopper,
        task: Some(task),
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What a call answered: status, headers, JSON body (Null when not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestApi {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        Answer {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Answer {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(
            self.http
                .post(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(self.http.put(self.url(path)).bearer_auth(token).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str, body: Value) -> Answer {
        self.send(
            self.http
                .delete(self.url(path))
                .bearer_auth(token)
                .json(&body),
        )
        .await
    }

    /// A customer row linked to `user`, as a checkout leaves it.
    pub async fn customer(&self, stripe_customer: &str, user: &str, email: &str) {
        sqlx::query(
            "INSERT INTO customers (stripe_customer_id, user_id, email) VALUES ($1, $2, $3)",
        )
        .bind(stripe_customer)
        .bind(user)
        .bind(email)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// Applies a Stripe event through billing's own event path.
    pub async fn apply(&self, event: Value) {
        let body = serde_json::to_vec(&event).unwrap();
        let decoded = process::decode(&body).unwrap();
        process::apply(&self.pool, &self.plans, &Refetcher::disabled(), &decoded, 1)
            .await
            .unwrap();
    }

    /// A paying Pro customer: a linked customer, an active subscription, two paid
    /// invoices, a card on file, and credits bought and partly spent.
    pub async fn seed_paying(&self, user: &str, customer: &str, email: &str) {
        self.customer(customer, user, email).await;
        let sub = format!("sub_{user}");
        self.apply(event(
            &format!("evt_{user}_sub"),
            "customer.subscription.created",
            1_760_000_010,
            subscription_object(&sub, customer, "active", "price_pro_monthly"),
        ))
        .await;
        for (n, created) in [(1, 1_760_000_020_i64), (2, 1_762_592_020)] {
            let mut invoice =
                invoice_object(&format!("in_{user}_{n}"), customer, &sub, "paid", created);
            invoice["hosted_invoice_url"] =
                format!("https://invoice.stripe.test/i/{user}_{n}").into();
            invoice["invoice_pdf"] =
                format!("https://pay.stripe.test/invoice/{user}_{n}/pdf").into();
            self.apply(event(
                &format!("evt_{user}_in_{n}"),
                "invoice.paid",
                created,
                invoice,
            ))
            .await;
        }
        let mut card = stripe_object("payment_method");
        card["id"] = format!("pm_{user}").into();
        card["customer"] = customer.into();
        self.apply(event(
            &format!("evt_{user}_pm"),
            "payment_method.attached",
            1_760_000_030,
            card,
        ))
        .await;
        // 1,000 credits granted, 120 spent (as entitlements' ConsumeCredits writes them).
        let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM customers WHERE user_id = $1")
            .bind(user)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let mut tx = tollgate_billing::db::Tx::begin(&self.pool).await.unwrap();
        for (delta, reason, key) in [(1000, "topup", "seed-topup"), (-120, "consume", "seed-use")] {
            tollgate_billing::handlers::credits::add_entry(
                &mut tx,
                id,
                delta,
                reason,
                &format!("{key}-{user}"),
                None,
                None,
                None,
            )
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }
}

/// Stripe's example event, made one of ours.
pub fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    let mut event = stripe_object("event");
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = created.into();
    event["livemode"] = false.into();
    event["api_version"] = tollgate_stripe::api_version().into();
    event["data"] = json!({ "object": object });
    event
}

pub fn user_token(sub: &str, email: Option<&str>) -> String {
    jwt_hs256(json!({ "sub": sub, "email": email, "exp": unix_now() + 300 }))
}

pub fn jwt_hs256(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .unwrap()
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}
