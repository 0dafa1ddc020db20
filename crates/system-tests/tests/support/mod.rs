//! Running the real service binaries as processes against a fresh database, vhost and
//! Redis prefix, and building the signed Stripe events they are fed.
//!
//! The binaries are this package's `system-*` bins: the services' own `main.rs`
//! built under other names, so `CARGO_BIN_EXE_*` always names an up-to-date build
//! (see Cargo.toml).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tollgate_proto::entitlements::v1::CheckRequest;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::{TestDatabase, TestRedis, TestVhost, signed_headers, stripe_fixture};
use tonic::transport::{Channel, Endpoint};

pub const SERVICE_TOKEN: &str = "system-test-service-token-0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_system_test_only";
pub const INGEST: &str = env!("CARGO_BIN_EXE_system-ingest");
pub const BILLING: &str = env!("CARGO_BIN_EXE_system-billing");
pub const ENTITLEMENTS: &str = env!("CARGO_BIN_EXE_system-entitlements");
pub const FULFILLMENT: &str = env!("CARGO_BIN_EXE_system-fulfillment");

/// Generous bound on anything the tests wait for (a slow, shared 2-core machine).
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn plans_path() -> String {
    format!(
        "{}/config/plans.toml",
        tollgate_test_support::workspace_root().display()
    )
}

/// A port free right now, which the service binds and, restarted, binds again. Taken
/// below Linux's ephemeral range (32768 and up by default): the kernel gives those to
/// outgoing connections, which could take the port while its replica is restarting.
pub fn free_port() -> u16 {
    loop {
        let port = 15_000 + (uuid::Uuid::new_v4().as_u128() % 15_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The stores one test owns.
pub struct Stores {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub redis: TestRedis,
    /// `DATABASE_URL` and `AMQP_URL` the services get: the shared test credentials, or a
    /// role and a user of this test's own ([`Stores::create_with_passwords`]).
    pub database_url: String,
    pub amqp_url: String,
    /// Where the services' logs go (their tails are printed when something fails;
    /// removed after a passing test).
    pub logs: PathBuf,
}

impl Stores {
    pub async fn create() -> Self {
        Self::create_as(None).await
    }

    /// Stores whose PostgreSQL role and RabbitMQ user are the test's own, with these
    /// passwords (which then appear in the services' `DATABASE_URL` and `AMQP_URL`).
    pub async fn create_with_passwords(database: &str, amqp: &str) -> Self {
        Self::create_as(Some((database, amqp))).await
    }

    async fn create_as(passwords: Option<(&str, &str)>) -> Self {
        let logs =
            std::env::temp_dir().join(format!("tollgate-system-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&logs).expect("a log directory");
        let db = TestDatabase::create().await;
        let vhost = TestVhost::create();
        let (database_url, amqp_url) = match passwords {
            Some((database, amqp)) => (
                db.url_with_password(database).await,
                vhost.amqp_url_with_password(amqp),
            ),
            None => (db.url(), vhost.amqp_url()),
        };
        let stores = Self {
            db,
            vhost,
            redis: TestRedis::create(),
            database_url,
            amqp_url,
            logs,
        };
        // What the `tollgate-migrate` Job does before any service starts.
        let migrated = Command::new(BILLING)
            .arg("migrate")
            .env_clear()
            .envs(stores.common_env())
            .env("DATABASE_URL", &stores.database_url)
            .env("AMQP_URL", &stores.amqp_url)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .await
            .expect("billing migrate runs");
        assert!(migrated.success(), "billing migrate failed");
        stores
    }

    fn common_env(&self) -> Vec<(String, String)> {
        vec![
            ("LOG_FORMAT".into(), "text".into()),
            ("RUST_LOG".into(), "info".into()),
            ("TOLLGATE_PLANS".into(), plans_path()),
            ("SHUTDOWN_TIMEOUT_SECS".into(), "10".into()),
        ]
    }

    pub fn ingest(&self, name: &str) -> Service {
        let port = free_port();
        let mut env = self.common_env();
        env.extend([
            ("INGEST_ADDR".into(), format!("127.0.0.1:{port}")),
            ("INGEST_WORKERS".into(), "1".into()),
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ]);
        self.service(
            name,
            INGEST,
            env,
            Ready::Http(format!("http://127.0.0.1:{port}/readyz")),
            port,
        )
    }

    pub fn billing(&self, name: &str) -> Service {
        let port = free_port();
        let mut env = self.common_env();
        env.extend([
            ("BILLING_ADDR".into(), format!("127.0.0.1:{port}")),
            ("BILLING_API_ADDR".into(), "127.0.0.1:0".into()),
            ("BILLING_MIGRATE".into(), "false".into()),
            ("BILLING_WORKERS".into(), "2".into()),
            ("BILLING_GAUGES_INTERVAL_SECS".into(), "1".into()),
            ("DATABASE_MAX_CONNECTIONS".into(), "4".into()),
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("AMQP_URL".into(), self.amqp_url.clone()),
        ]);
        self.service(
            name,
            BILLING,
            env,
            Ready::Http(format!("http://127.0.0.1:{port}/readyz")),
            port,
        )
    }

    pub fn entitlements(&self, name: &str) -> Service {
        let port = free_port();
        let metrics_port = free_port();
        let mut env = self.common_env();
        env.extend([
            ("ENTITLEMENTS_ADDR".into(), format!("127.0.0.1:{port}")),
            (
                "ENTITLEMENTS_METRICS_ADDR".into(),
                format!("127.0.0.1:{metrics_port}"),
            ),
            ("ENTITLEMENTS_SERVICE_TOKENS".into(), SERVICE_TOKEN.into()),
            (
                "ENTITLEMENTS_REDIS_PREFIX".into(),
                self.redis.prefix().to_string(),
            ),
            ("DATABASE_MAX_CONNECTIONS".into(), "4".into()),
            ("DATABASE_URL".into(), self.database_url.clone()),
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("REDIS_URL".into(), self.redis.url()),
        ]);
        let mut service = self.service(name, ENTITLEMENTS, env, Ready::Grpc(port), port);
        service.metrics_port = metrics_port;
        service
    }

    /// Fulfillment in front of the entitlements serving gRPC on `entitlements_port`,
    /// authenticating Dialogflow with `basic_auth` (`user:password`).
    pub fn fulfillment(&self, name: &str, entitlements_port: u16, basic_auth: &str) -> Service {
        let port = free_port();
        let mut env = self.common_env();
        env.extend([
            ("FULFILLMENT_ADDR".into(), format!("127.0.0.1:{port}")),
            ("FULFILLMENT_WORKERS".into(), "1".into()),
            (
                "FULFILLMENT_ENTITLEMENTS_URL".into(),
                format!("http://127.0.0.1:{entitlements_port}"),
            ),
            (
                "FULFILLMENT_ENTITLEMENTS_TOKEN".into(),
                SERVICE_TOKEN.into(),
            ),
            ("FULFILLMENT_BASIC_AUTH".into(), basic_auth.into()),
        ]);
        self.service(
            name,
            FULFILLMENT,
            env,
            Ready::Http(format!("http://127.0.0.1:{port}/readyz")),
            port,
        )
    }

    fn service(
        &self,
        name: &str,
        binary: &'static str,
        env: Vec<(String, String)>,
        ready: Ready,
        port: u16,
    ) -> Service {
        Service {
            name: name.to_string(),
            binary,
            env,
            log: self.logs.join(format!("{name}.log")),
            ready,
            port,
            metrics_port: port,
            child: None,
        }
    }
}

impl Drop for Stores {
    /// The logs are kept when the test failed (its panic message quotes their tails).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

enum Ready {
    /// `GET` answers 200.
    Http(String),
    /// A Check on this port is answered.
    Grpc(u16),
}

/// One replica of a service, as a child process.
pub struct Service {
    pub name: String,
    binary: &'static str,
    env: Vec<(String, String)>,
    log: PathBuf,
    ready: Ready,
    /// The port it serves on (ingest: webhooks; billing: probes and metrics;
    /// entitlements: gRPC). The same across restarts.
    pub port: u16,
    /// Where `/metrics` is.
    pub metrics_port: u16,
    child: Option<Child>,
}

impl Service {
    /// Sets (or replaces) one variable of its environment, for the next start.
    pub fn set_env(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self.env.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.env.push((name.to_string(), value)),
        }
    }

    /// Everything it wrote to stdout and stderr, across its starts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts the process and waits until it is ready.
    pub async fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the log file");
        let child = Command::new(self.binary)
            // Only what we set: no STRIPE_SECRET_KEY or OTEL_* from the caller's shell.
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary));
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "{} exited while starting ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.is_ready().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} not ready:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        match &self.ready {
            Ready::Http(url) => reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success()),
            Ready::Grpc(port) => {
                let mut client = EntitlementsClient::new(channel(*port));
                client
                    .check(authed(CheckRequest {
                        subject: "readiness-probe".into(),
                        feature: "docs.read".into(),
                        at_least_version: 0,
                    }))
                    .await
                    .is_ok()
            }
        }
    }

    /// SIGTERM, as Kubernetes sends, then waits for the process to exit; it must
    /// exit cleanly (status 0) after its own drain.
    pub async fn terminate(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("not yet reaped");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        let status = tokio::time::timeout(PATIENCE, child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit after SIGTERM:\n{}",
                    self.name,
                    self.log_tail()
                )
            })
            .expect("waiting for the process");
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM:\n{}",
            self.name,
            self.log_tail()
        );
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A lazily connecting channel: a restarted replica on the same port is reached
/// again without building a new client.
pub fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

pub fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {SERVICE_TOKEN}").parse().expect("ASCII"),
    );
    request
}

/// The value of one series in Prometheus text (`name{labels}` exactly as rendered).
pub fn series(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name_and_labels)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs a webhook signed now (a retry is signed again, as Stripe does).
pub async fn post_webhook(
    client: &reqwest::Client,
    port: u16,
    body: &[u8],
) -> Result<reqwest::StatusCode, reqwest::Error> {
    client
        .post(format!("http://127.0.0.1:{port}/webhook"))
        .header("content-type", "application/json")
        .header("stripe-signature", signed_headers(WEBHOOK_SECRET, body))
        .body(body.to_vec())
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map(|r| r.status())
}

/// A Stripe event (the envelope of a real one) of `event_type` about `object`.
pub fn event(event_type: &str, id: &str, created: i64, object: Value) -> Vec<u8> {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/invoice.paid.stripe-sync-engine.json",
    ))
    .expect("fixture is JSON");
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = created.into();
    event["livemode"] = false.into();
    event["data"] = json!({ "object": object });
    serde_json::to_vec(&event).expect("serialisable")
}

/// A paid payment-mode Checkout Session of `customer` (our `user`) buying `credits`
/// (a real session, made ours).
pub fn topup_session(id: &str, customer: &str, user: &str, credits: i64) -> Value {
    let fixture: Value = serde_json::from_slice(&stripe_fixture(
        "complete/checkout.session.completed.payment_mode.stripe-sync-engine.json",
    ))
    .expect("fixture is JSON");
    let mut session = fixture["data"]["object"].clone();
    session["id"] = id.into();
    session["customer"] = customer.into();
    session["client_reference_id"] = user.into();
    session["metadata"] = json!({ "credits": credits.to_string() });
    session["payment_status"] = "paid".into();
    session["payment_intent"] = format!("pi_{id}").into();
    session
}
