use std::future::Future;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use tollgate_broker::{Publisher, PublisherConfig};
use tollgate_entitlements::startup::Stopper;
use tollgate_entitlements::{Application, Config};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_runtime::Env;
use tollgate_test_support::{TestDatabase, TestRedis, TestVhost};
use tonic::Request;
use tonic::transport::Channel;
use uuid::Uuid;

pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";
pub const HS256_SECRET: &str = "test-hs256-secret-of-at-least-32-bytes!!";

pub struct TestApp {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub redis: TestRedis,
    /// The test's own view of the database.
    pub pool: PgPool,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub client: EntitlementsClient<Channel>,
    _publisher: Publisher,
    stopper: Stopper,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    relay_stop: watch::Sender<bool>,
    relay: Option<tokio::task::JoinHandle<()>>,
}

pub struct Options {
    pub plans: &'static str,
    pub enforcement: bool,
    pub extra_env: Vec<(&'static str, String)>,
    /// Run billing's outbox relay in the test, publishing what `change` emits.
    pub relay: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            plans: "plans.toml",
            enforcement: true,
            extra_env: Vec::new(),
            relay: true,
        }
    }
}

pub fn plans_path(file: &str) -> String {
    format!(
        "{}/config/{file}",
        tollgate_test_support::workspace_root().display()
    )
}

pub fn fixture(relative: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/{relative}",
        tollgate_test_support::workspace_root().display()
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The environment entitlements runs with in tests.
pub fn env_for(db: &TestDatabase, vhost: &TestVhost, redis: &TestRedis, options: &Options) -> Env {
    let mut pairs: Vec<(&str, String)> = vec![
        ("ENTITLEMENTS_ADDR", "127.0.0.1:0".into()),
        ("ENTITLEMENTS_METRICS_ADDR", "127.0.0.1:0".into()),
        ("DATABASE_URL", db.url()),
        ("DATABASE_MAX_CONNECTIONS", "8".into()),
        ("AMQP_URL", vhost.amqp_url()),
        ("REDIS_URL", redis.url()),
        ("ENTITLEMENTS_REDIS_PREFIX", redis.prefix().into()),
        ("TOLLGATE_PLANS", plans_path(options.plans)),
        ("STRIPE_BILLING_ENABLED", options.enforcement.to_string()),
        ("ENTITLEMENTS_SERVICE_TOKENS", SERVICE_TOKEN.into()),
        ("ENTITLEMENTS_JWT_HS256_SECRET", HS256_SECRET.into()),
        (
            "ENTITLEMENTS_CORS_ORIGINS",
            "https://app.example.com".into(),
        ),
    ];
    for (name, value) in &options.extra_env {
        pairs.retain(|(n, _)| n != name);
        pairs.push((name, value.clone()));
    }
    Env::from_pairs(pairs)
}

pub async fn spawn_app(options: Options) -> TestApp {
    let db = TestDatabase::create().await;
    let vhost = TestVhost::create();
    let redis = TestRedis::create();
    let pool = db.pool().await;
    tollgate_billing::db::MIGRATOR
        .run(&pool)
        .await
        .expect("migrations");
    let publisher = Publisher::start(PublisherConfig {
        url: vhost.amqp_url(),
        connection_name: "test-relay".into(),
        channels: 1,
        confirm_timeout: Duration::from_secs(5),
        declare_topology: true,
    });
    assert!(
        publisher.wait_ready(Duration::from_secs(10)).await,
        "broker reachable"
    );
    let served = serve(&env_for(&db, &vhost, &redis, &options)).await;
    let (relay_stop, relay_rx) = watch::channel(false);
    let relay = options.relay.then(|| {
        tokio::spawn(tollgate_billing::outbox::relay(
            pool.clone(),
            publisher.clone(),
            relay_rx,
        ))
    });
    TestApp {
        db,
        vhost,
        redis,
        pool,
        addr: served.addr,
        metrics_addr: served.metrics_addr,
        client: served.client,
        _publisher: publisher,
        stopper: served.stopper,
        task: Some(served.running),
        relay_stop,
        relay,
    }
}

/// A request carrying `token` as its bearer token.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub fn service<T>(message: T) -> Request<T> {
    authed(message, SERVICE_TOKEN)
}

/// A customer as billing would have written it.
pub struct Seed<'a> {
    pub user_id: &'a str,
    pub email: &'a str,
    pub status: &'a str,
    pub tier: &'a str,
    pub features: &'a [&'a str],
}

impl TestApp {
    pub async fn seed(&self, seed: Seed<'_>) -> Uuid {
        let features: Vec<String> = seed.features.iter().map(|f| f.to_string()).collect();
        sqlx::query_scalar(
            "INSERT INTO customers (user_id, email, stripe_customer_id, access_status, tier, stripe_features)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(seed.user_id)
        .bind(seed.email)
        .bind(format!("cus_{}", seed.user_id))
        .bind(seed.status)
        .bind(seed.tier)
        .bind(&features)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Changes a customer's access the way billing does: in one transaction with
    /// an outbox entry (`tollgate_billing::outbox::emit`), relayed to the feed.
    pub async fn change(&self, customer: Uuid, status: &str, tier: &str) {
        let mut tx = tollgate_billing::db::Tx::begin(&self.pool).await.unwrap();
        sqlx::query("UPDATE customers SET access_status = $2, tier = $3 WHERE id = $1")
            .bind(customer)
            .bind(status)
            .bind(tier)
            .execute(&mut *tx)
            .await
            .unwrap();
        tollgate_billing::outbox::emit(&mut tx, customer, "access")
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }

    /// The outbox version of the customer's latest change.
    pub async fn latest_version(&self) -> i64 {
        sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM entitlement_outbox")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn set_balance(&self, customer: Uuid, balance: i64) {
        sqlx::query(
            "INSERT INTO credit_balances (customer_id, balance) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO UPDATE SET balance = EXCLUDED.balance",
        )
        .bind(customer)
        .bind(balance)
        .execute(&self.pool)
        .await
        .unwrap();
    }

    pub async fn check(&self, subject: &str, feature: &str) -> pb::CheckResponse {
        self.client
            .clone()
            .check(service(pb::CheckRequest {
                subject: subject.into(),
                feature: feature.into(),
                at_least_version: 0,
            }))
            .await
            .unwrap_or_else(|e| panic!("check {subject} {feature}: {e}"))
            .into_inner()
    }

    /// Stops the service (and the relay); the database, vhost and keys go when
    /// the TestApp is dropped.
    pub async fn stop(&mut self) {
        self.stopper.stop();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        self.relay_stop.send_replace(true);
        if let Some(relay) = self.relay.take() {
            relay.await.unwrap();
        }
    }
}

/// One running entitlements service (the test's own, or a second replica), live and
/// serving, with a client connected to it.
pub struct Replica {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub client: EntitlementsClient<Channel>,
    stopper: Stopper,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve(env: &Env) -> Replica {
    let app = Application::build(Config::from_env(env).expect("config"))
        .await
        .expect("entitlements starts");
    assert!(
        app.wait_ready(Duration::from_secs(20)).await,
        "change feed live"
    );
    let addr = app.addr();
    let metrics_addr = app.metrics_addr();
    let stopper = app.stopper();
    let running = tokio::spawn(app.run_until_stopped());
    let client = EntitlementsClient::connect(format!("http://{addr}"))
        .await
        .expect("connects");
    Replica {
        addr,
        metrics_addr,
        client,
        stopper,
        running,
    }
}

impl TestApp {
    /// A second replica on the same database, vhost and Redis prefix, with
    /// `extra_env` over the test's environment (a proxied `DATABASE_URL` or
    /// `AMQP_URL`, say).
    pub async fn spawn_replica(&self, extra_env: Vec<(&'static str, String)>) -> Replica {
        let options = Options {
            extra_env,
            ..Options::default()
        };
        serve(&env_for(&self.db, &self.vhost, &self.redis, &options)).await
    }
}

impl Replica {
    pub async fn stop(self) {
        self.stopper.stop();
        self.running.await.unwrap().unwrap();
    }
}

pub fn reason(r: i32) -> pb::Reason {
    pb::Reason::try_from(r).unwrap_or(pb::Reason::Unspecified)
}

/// Polls `check` every 20 ms until it is true; panics after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// The value of one sample on `GET /metrics` (`name{labels}` exactly as rendered),
/// 0 when absent. The recorder is shared by every test in this binary.
pub async fn metric(metrics_addr: std::net::SocketAddr, sample: &str) -> f64 {
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}
