use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use serde_json::{Value, json};
use sqlx::PgPool;
use tollgate_entitlements::startup::Stopper;
use tollgate_fulfillment::{Application, Config};
use tollgate_runtime::Env;
use tollgate_test_support::{TestDatabase, TestRedis, TestVhost};

pub const ENTITLEMENTS_TOKEN: &str = "fulfillment-test-service-token";
pub const BILLING_TOKEN: &str = "fulfillment-test-billing-token";
pub const BASIC_USER: &str = "dialogflow";
pub const BASIC_PASSWORD: &str = "test-basic-password-42";
pub const HEADER_NAME: &str = "X-Tollgate-Webhook";
pub const HEADER_TOKEN: &str = "test-header-token-0123456789";
pub const BILLING_PAGE: &str = "https://app.example.com/billing";

pub fn plans_path() -> String {
    format!("{}/../../config/plans.toml", env!("CARGO_MANIFEST_DIR"))
}

/// A sample request from tests/fixtures (see its README).
pub fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The ES sample asking for `action`, with the user in the original request's payload
/// (`None`: no user at all) and extra query parameters.
pub fn es_request(action: &str, user: Option<Value>, parameters: Value) -> Value {
    let mut request = fixture("es-webhook-request.json");
    request["queryResult"]["action"] = json!(action);
    match user {
        Some(user) => request["originalDetectIntentRequest"]["payload"] = json!({ "user": user }),
        None => request["originalDetectIntentRequest"]["payload"] = json!({}),
    }
    if let Value::Object(extra) = parameters {
        for (key, value) in extra {
            request["queryResult"]["parameters"][key] = value;
        }
    }
    request
}

/// The CX sample with fulfillment tag `tag` and these session parameters.
pub fn cx_request(tag: &str, parameters: Value) -> Value {
    let mut request = fixture("cx-webhook-request.json");
    request["fulfillmentInfo"]["tag"] = json!(tag);
    request["sessionInfo"]["parameters"] = parameters;
    request
}

pub const ES_SESSION: &str =
    "projects/tollgate-agent/agent/sessions/a1b2c3d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d";
pub const CX_SESSION: &str = "projects/tollgate-agent/locations/global/agents/3b1e3f0a-98b4-4a7e-a3a5-2f8c0c1d5e6f/sessions/cx-session-5f0c9e1d";

/// The real entitlements service on its own database, vhost and key prefix, with
/// billing's schema; customers are seeded the way billing writes them.
pub struct Entitlements {
    // Held for their Drop: the database, vhost and keys go with the test.
    _db: TestDatabase,
    _vhost: TestVhost,
    _redis: TestRedis,
    pub pool: PgPool,
    pub addr: SocketAddr,
    stopper: Stopper,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Entitlements {
    pub async fn start() -> Self {
        let db = TestDatabase::create().await;
        let vhost = TestVhost::create();
        let redis = TestRedis::create();
        let pool = db.pool().await;
        tollgate_billing::db::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations");
        let env = Env::from_pairs([
            ("ENTITLEMENTS_ADDR", "127.0.0.1:0".to_string()),
            ("ENTITLEMENTS_METRICS_ADDR", "127.0.0.1:0".into()),
            ("DATABASE_URL", db.url()),
            ("DATABASE_MAX_CONNECTIONS", "4".into()),
            ("AMQP_URL", vhost.amqp_url()),
            ("REDIS_URL", redis.url()),
            ("ENTITLEMENTS_REDIS_PREFIX", redis.prefix().into()),
            ("TOLLGATE_PLANS", plans_path()),
            ("ENTITLEMENTS_SERVICE_TOKENS", ENTITLEMENTS_TOKEN.into()),
            ("SHUTDOWN_TIMEOUT_SECS", "2".into()),
        ]);
        let config = tollgate_entitlements::Config::from_env(&env).expect("entitlements config");
        let app = tollgate_entitlements::Application::build(config)
            .await
            .expect("entitlements starts");
        assert!(
            app.wait_ready(Duration::from_secs(20)).await,
            "entitlements' change feed is live"
        );
        let addr = app.addr();
        let stopper = app.stopper();
        let task = Some(tokio::spawn(app.run_until_stopped()));
        Self {
            _db: db,
            _vhost: vhost,
            _redis: redis,
            pool,
            addr,
            stopper,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A customer row as billing writes it; returns its id.
    pub async fn customer(
        &self,
        user_id: &str,
        email: &str,
        status: &str,
        tier: &str,
    ) -> sqlx::types::Uuid {
        sqlx::query_scalar(
            "INSERT INTO customers (user_id, email, stripe_customer_id, access_status, tier)
             VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(user_id)
        .bind(email)
        .bind(format!("cus_{user_id}"))
        .bind(status)
        .bind(tier)
        .fetch_one(&self.pool)
        .await
        .expect("seeding a customer")
    }

    /// A monthly subscription to `price` renewing in 20 days, with a paid (or, if
    /// `paid` is false, an attempted and still open) latest invoice.
    pub async fn subscription(
        &self,
        user_id: &str,
        status: &str,
        price: &str,
        tier: &str,
        plan: &str,
        paid: bool,
    ) {
        let sub = format!("sub_{user_id}");
        sqlx::query(
            "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, tier, plan,
                                        billing_interval, current_period_end, cancel_at_period_end,
                                        snapshot_created, snapshot_rank, snapshot_event_id)
             VALUES ($1, $2, $3, $4, $5, $6, 'month', '2026-12-13T10:00:00Z', false, 1, 1, $7)",
        )
        .bind(&sub)
        .bind(format!("cus_{user_id}"))
        .bind(status)
        .bind(price)
        .bind(tier)
        .bind(plan)
        .bind(format!("evt_sub_{user_id}"))
        .execute(&self.pool)
        .await
        .expect("seeding a subscription");
        let (invoice_status, paid_at) = if paid {
            ("paid", Some("2026-11-13T10:00:00Z"))
        } else {
            ("open", None)
        };
        sqlx::query(
            "INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, currency,
                                   amount_due, amount_paid, amount_remaining, attempted, invoice_created, paid_at,
                                   snapshot_created, snapshot_rank, snapshot_event_id)
             VALUES ($1, $2, $3, $4, 'usd', 900, $5, $6, true, 1, $7::timestamptz, 1, 1, $8)",
        )
        .bind(format!("in_{user_id}"))
        .bind(format!("cus_{user_id}"))
        .bind(&sub)
        .bind(invoice_status)
        .bind(if paid { 900_i64 } else { 0 })
        .bind(if paid { 0_i64 } else { 900 })
        .bind(paid_at)
        .bind(format!("evt_in_{user_id}"))
        .execute(&self.pool)
        .await
        .expect("seeding an invoice");
    }

    pub async fn set_balance(&self, customer: sqlx::types::Uuid, balance: i64) {
        sqlx::query("INSERT INTO credit_balances (customer_id, balance) VALUES ($1, $2)")
            .bind(customer)
            .bind(balance)
            .execute(&self.pool)
            .await
            .expect("seeding a balance");
    }

    pub async fn stop(&mut self) {
        self.stopper.stop();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// A request billing's API received.
#[derive(Debug, Clone)]
pub struct BillingCall {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct BillingState {
    calls: Mutex<Vec<BillingCall>>,
    failing: Mutex<bool>,
}

/// Serves billing's HTTP API contract (`POST /v1/checkout/sessions`,
/// `POST /v1/portal/sessions`, bearer token, 201 with the session's url) and
/// records every request. Stands in until the real API (being built in the billing
/// crate) can be started here instead.
pub struct BillingApi {
    pub url: String,
    state: Arc<BillingState>,
    handle: actix_web::dev::ServerHandle,
}

async fn billing_session(
    request: HttpRequest,
    body: web::Bytes,
    state: web::Data<BillingState>,
) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let path = request.path().to_string();
    state.calls.lock().unwrap().push(BillingCall {
        path: path.clone(),
        authorization: authorization.clone(),
        body: body.clone(),
    });
    if authorization.as_deref() != Some(&format!("Bearer {BILLING_TOKEN}")) {
        return HttpResponse::Unauthorized().json(json!({"error": {"code": "unauthorized"}}));
    }
    if *state.failing.lock().unwrap() {
        return HttpResponse::ServiceUnavailable().json(json!({"error": {"code": "unavailable"}}));
    }
    let Some(user_id) = body["user_id"].as_str().filter(|u| !u.is_empty()) else {
        return HttpResponse::BadRequest().json(json!({"error": {"code": "invalid_request"}}));
    };
    if path == "/v1/checkout/sessions" {
        let (Some("subscription"), Some(plan)) = (body["kind"].as_str(), body["plan"].as_str())
        else {
            return HttpResponse::BadRequest().json(json!({"error": {"code": "invalid_request"}}));
        };
        let id = format!("cs_test_{plan}_{user_id}");
        HttpResponse::Created().json(json!({
            "id": id,
            "url": format!("https://checkout.stripe.com/c/pay/{id}"),
        }))
    } else {
        HttpResponse::Created().json(json!({
            "url": format!("https://billing.stripe.com/p/session/test_{user_id}"),
        }))
    }
}

impl BillingApi {
    pub async fn start() -> Self {
        let state = web::Data::new(BillingState::default());
        let shared = state.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/v1/checkout/sessions", web::post().to(billing_session))
                .route("/v1/portal/sessions", web::post().to(billing_session))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            state: state.into_inner(),
            handle,
        }
    }

    pub fn calls(&self) -> Vec<BillingCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// From now on every session request is answered 503.
    pub fn fail(&self) {
        *self.state.failing.lock().unwrap() = true;
    }

    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }
}

/// A loopback port that accepts connections and never answers: a hung dependency.
pub async fn silent_listener() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

pub struct Fulfillment {
    pub address: String,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

pub struct Options {
    pub entitlements_url: String,
    pub billing_api_url: Option<String>,
    pub timeout_ms: u64,
    pub extra: Vec<(&'static str, String)>,
}

impl Options {
    pub fn new(entitlements_url: String, billing: Option<&BillingApi>) -> Self {
        Self {
            entitlements_url,
            billing_api_url: billing.map(|b| b.url.clone()),
            timeout_ms: 2000,
            extra: Vec::new(),
        }
    }
}

impl Fulfillment {
    pub async fn start(options: Options) -> Self {
        let mut pairs: Vec<(&str, String)> = vec![
            ("FULFILLMENT_ADDR", "127.0.0.1:0".into()),
            ("FULFILLMENT_WORKERS", "1".into()),
            (
                "FULFILLMENT_BASIC_AUTH",
                format!("{BASIC_USER}:{BASIC_PASSWORD}"),
            ),
            ("FULFILLMENT_HEADER_NAME", HEADER_NAME.into()),
            ("FULFILLMENT_HEADER_TOKEN", HEADER_TOKEN.into()),
            ("FULFILLMENT_ENTITLEMENTS_URL", options.entitlements_url),
            ("FULFILLMENT_ENTITLEMENTS_TOKEN", ENTITLEMENTS_TOKEN.into()),
            ("FULFILLMENT_BILLING_API_TOKEN", BILLING_TOKEN.into()),
            ("FULFILLMENT_BILLING_PAGE_URL", BILLING_PAGE.into()),
            (
                "FULFILLMENT_UPSTREAM_TIMEOUT_MS",
                options.timeout_ms.to_string(),
            ),
            ("TOLLGATE_PLANS", plans_path()),
            ("SHUTDOWN_TIMEOUT_SECS", "2".into()),
        ];
        if let Some(url) = options.billing_api_url {
            pairs.push(("FULFILLMENT_BILLING_API_URL", url));
        }
        for (name, value) in options.extra {
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
        }
        let config = Config::from_env(&Env::from_pairs(pairs)).expect("fulfillment config");
        let app = Application::build(config).expect("fulfillment starts");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        Self {
            address,
            client: reqwest::Client::new(),
            handle,
        }
    }

    pub fn basic_auth() -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD
                .encode(format!("{BASIC_USER}:{BASIC_PASSWORD}"))
        )
    }

    /// POSTs `body` (raw bytes) to /webhook with these headers.
    pub async fn post_raw(&self, body: &[u8], headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhook", self.address))
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("fulfillment answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text }));
        (status, json)
    }

    /// POSTs a webhook request authenticated the way Dialogflow does (basic auth).
    pub async fn ask(&self, request: &Value) -> Value {
        let (status, body) = self
            .post_raw(
                request.to_string().as_bytes(),
                &[("authorization", &Self::basic_auth())],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("fulfillment answers");
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

/// The single text message of an ES answer, checked against `fulfillmentText`.
pub fn es_text(answer: &Value) -> String {
    let text = answer["fulfillmentText"]
        .as_str()
        .expect("fulfillmentText")
        .to_string();
    assert_eq!(
        answer["fulfillmentMessages"],
        json!([{ "text": { "text": [text] } }]),
        "{answer}"
    );
    assert_eq!(answer["source"], "tollgate");
    text
}

/// The single text message of a CX answer.
pub fn cx_text(answer: &Value) -> String {
    let messages = &answer["fulfillmentResponse"]["messages"];
    assert_eq!(messages.as_array().map(Vec::len), Some(1), "{answer}");
    assert_eq!(answer["fulfillmentResponse"]["mergeBehavior"], "REPLACE");
    messages[0]["text"]["text"][0]
        .as_str()
        .expect("a text message")
        .to_string()
}

/// The parameters of fulfillment's own ES output context.
pub fn own_context(answer: &Value) -> Value {
    answer["outputContexts"]
        .as_array()
        .and_then(|contexts| {
            contexts
                .iter()
                .find(|c| c["name"] == json!(format!("{ES_SESSION}/contexts/tollgate-billing")))
        })
        .map_or(Value::Null, |c| {
            assert_eq!(c["lifespanCount"], 5, "{c}");
            c["parameters"].clone()
        })
}
