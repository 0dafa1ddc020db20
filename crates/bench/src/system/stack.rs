//! The system under load: the release `ingest`, two `billing` replicas and
//! `entitlements`, as processes of their own, on a fresh database, vhost and Redis
//! prefix; optionally reaching PostgreSQL, RabbitMQ and Redis through loopback
//! proxies the harness can cut.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tollgate_proto::entitlements::v1::CheckRequest;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::{TcpProxy, TestDatabase, TestRedis, TestVhost, workspace_root};
use tonic::transport::{Channel, Endpoint};

use crate::entitlements::{TOKEN, WEBHOOK_SECRET, authed, sibling};

/// Proxies in front of each store, for cutting them without touching the real services.
pub struct Proxies {
    pub postgres: TcpProxy,
    pub rabbitmq: TcpProxy,
    pub redis: TcpProxy,
}

pub struct Stores {
    pub db: TestDatabase,
    pub vhost: TestVhost,
    pub redis: TestRedis,
    pub proxies: Option<Proxies>,
    pub logs: PathBuf,
}

impl Stores {
    pub async fn create(with_proxies: bool) -> anyhow::Result<Self> {
        let logs =
            std::env::temp_dir().join(format!("tollgate-system-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&logs)?;
        let db = TestDatabase::create().await;
        let vhost = TestVhost::create();
        let redis = TestRedis::create();
        let proxies = if with_proxies {
            let redis_addr = redis
                .url()
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_string();
            Some(Proxies {
                postgres: TcpProxy::start(&db.server_addr()).await,
                rabbitmq: TcpProxy::start(
                    &std::env::var("RABBITMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into()),
                )
                .await,
                redis: TcpProxy::start(&redis_addr).await,
            })
        } else {
            None
        };
        let stores = Self {
            db,
            vhost,
            redis,
            proxies,
            logs,
        };
        let migrated = Command::new(sibling("billing")?)
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", stores.db.url())
            .env("AMQP_URL", stores.vhost.amqp_url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .status()
            .await?;
        if !migrated.success() {
            bail!("billing migrate failed");
        }
        Ok(stores)
    }

    /// What the services use: the proxies when there are some.
    fn database_url(&self) -> String {
        match &self.proxies {
            Some(p) => self.db.url_via(&p.postgres.addr()),
            None => self.db.url(),
        }
    }

    fn amqp_url(&self) -> String {
        match &self.proxies {
            Some(p) => self.vhost.amqp_url_via(&p.rabbitmq.addr()),
            None => self.vhost.amqp_url(),
        }
    }

    fn redis_url(&self) -> String {
        match &self.proxies {
            Some(p) => format!("redis://{}", p.redis.addr()),
            None => self.redis.url(),
        }
    }

    fn common_env(&self) -> Vec<(String, String)> {
        vec![
            ("LOG_FORMAT".into(), "text".into()),
            ("RUST_LOG".into(), "warn".into()),
            (
                "TOLLGATE_PLANS".into(),
                workspace_root()
                    .join("config/plans.toml")
                    .display()
                    .to_string(),
            ),
            ("SHUTDOWN_TIMEOUT_SECS".into(), "5".into()),
            ("AMQP_URL".into(), self.amqp_url()),
        ]
    }

    pub fn ingest(&self) -> anyhow::Result<Service> {
        let port = stable_port();
        let mut env = self.common_env();
        env.extend([
            ("INGEST_ADDR".into(), format!("127.0.0.1:{port}")),
            ("STRIPE_WEBHOOK_SECRET".into(), WEBHOOK_SECRET.into()),
        ]);
        self.service(
            "ingest",
            "ingest",
            env,
            Ready::Http(format!("http://127.0.0.1:{port}/readyz")),
            port,
        )
    }

    pub fn billing(&self, replica: usize) -> anyhow::Result<Service> {
        let port = stable_port();
        let mut env = self.common_env();
        env.extend([
            ("BILLING_ADDR".into(), format!("127.0.0.1:{port}")),
            ("BILLING_MIGRATE".into(), "false".into()),
            ("DATABASE_URL".into(), self.database_url()),
        ]);
        self.service(
            &format!("billing-{replica}"),
            "billing",
            env,
            Ready::Http(format!("http://127.0.0.1:{port}/readyz")),
            port,
        )
    }

    pub fn entitlements(&self) -> anyhow::Result<Service> {
        let port = stable_port();
        let mut env = self.common_env();
        env.extend([
            ("ENTITLEMENTS_ADDR".into(), format!("127.0.0.1:{port}")),
            (
                "ENTITLEMENTS_METRICS_ADDR".into(),
                format!("127.0.0.1:{}", stable_port()),
            ),
            ("ENTITLEMENTS_SERVICE_TOKENS".into(), TOKEN.into()),
            (
                "ENTITLEMENTS_REDIS_PREFIX".into(),
                self.redis.prefix().to_string(),
            ),
            ("DATABASE_URL".into(), self.database_url()),
            ("REDIS_URL".into(), self.redis_url()),
        ]);
        self.service("entitlements", "entitlements", env, Ready::Grpc(port), port)
    }

    fn service(
        &self,
        name: &str,
        binary: &str,
        env: Vec<(String, String)>,
        ready: Ready,
        port: u16,
    ) -> anyhow::Result<Service> {
        Ok(Service {
            name: name.to_string(),
            binary: sibling(binary)?,
            env,
            log: self.logs.join(format!("{name}.log")),
            ready,
            port,
            child: None,
        })
    }
}

/// A port free now that a restarted process can bind again: below Linux's ephemeral
/// range, which outgoing connections could take from it meanwhile.
fn stable_port() -> u16 {
    loop {
        let port = 15_000 + (uuid::Uuid::new_v4().as_u128() % 15_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

enum Ready {
    Http(String),
    Grpc(u16),
}

/// One process of the stack.
pub struct Service {
    pub name: String,
    binary: PathBuf,
    env: Vec<(String, String)>,
    log: PathBuf,
    ready: Ready,
    pub port: u16,
    child: Option<Child>,
}

impl Service {
    /// Starts the process and waits (up to two minutes) until it says it is ready.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.binary)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "{} exited while starting ({status}):\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if self.is_ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} not ready after 2 minutes:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn is_ready(&self) -> bool {
        match &self.ready {
            Ready::Http(url) => reqwest::get(url)
                .await
                .is_ok_and(|r| r.status().is_success()),
            Ready::Grpc(port) => EntitlementsClient::new(channel(*port))
                .check(authed(CheckRequest {
                    subject: "readiness-probe".into(),
                    feature: "docs.read".into(),
                    at_least_version: 0,
                }))
                .await
                .is_ok_and(|r| !r.into_inner().degraded),
        }
    }

    /// SIGKILL: no drain, no goodbye; unacknowledged deliveries go back to the queue.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill().await?;
        Ok(())
    }

    /// Still running (not exited by itself)?
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

/// A lazily connecting channel with bounded connects and calls.
pub fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a valid URI")
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}
