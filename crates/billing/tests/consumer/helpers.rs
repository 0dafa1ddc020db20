use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use sqlx::PgPool;
use tollgate_billing::startup::Stopper;
use tollgate_billing::{Application, Config};
use tollgate_broker::{Publisher, PublisherConfig, lapin};
use tollgate_events::topology::EVENTS_EXCHANGE;
use tollgate_runtime::Env;
use tollgate_stripe::Refetcher;
use tollgate_test_support::{TcpProxy, TestDatabase, TestVhost};

pub struct TestBilling {
    /// Dropped (with the database) when the test ends.
    _db: TestDatabase,
    pub vhost: TestVhost,
    /// The test's own view of the database (never through the proxy).
    pub pool: PgPool,
    pub publisher: Publisher,
    pub db_proxy: Option<TcpProxy>,
    pub instances: Vec<(Stopper, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    /// Each instance's probes-and-metrics port, in start order.
    pub http_ports: Vec<u16>,
    /// Each instance's Stripe refetcher, in start order.
    pub refetchers: Vec<Arc<Refetcher>>,
    database_url: String,
    max_attempts: u32,
    plans_path: String,
    env: Vec<(&'static str, String)>,
}

pub struct Options {
    pub instances: usize,
    /// Another plans file than config/plans.toml.
    pub plans_path: Option<String>,
    pub db_via_proxy: bool,
    pub max_attempts: u32,
    /// More environment for every instance (`STRIPE_SECRET_KEY`, `SMTP_URL`, ...).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instances: 1,
            plans_path: None,
            db_via_proxy: false,
            max_attempts: 6,
            env: Vec::new(),
        }
    }
}

pub async fn spawn_billing(options: Options) -> TestBilling {
    let db = TestDatabase::create().await;
    let vhost = TestVhost::create();
    let db_proxy = if options.db_via_proxy {
        Some(TcpProxy::start(&db.server_addr()).await)
    } else {
        None
    };
    let database_url = match &db_proxy {
        Some(proxy) => db.url_via(&proxy.addr()),
        None => db.url(),
    };
    let pool = db.pool().await;
    let publisher = Publisher::start(PublisherConfig {
        url: vhost.amqp_url(),
        connection_name: "test-publisher".into(),
        channels: 1,
        confirm_timeout: Duration::from_secs(5),
        declare_topology: true,
    });
    assert!(publisher.wait_ready(Duration::from_secs(10)).await);
    let mut billing = TestBilling {
        _db: db,
        vhost,
        pool,
        publisher,
        db_proxy,
        database_url,
        max_attempts: options.max_attempts,
        plans_path: options.plans_path.unwrap_or_else(plans_path),
        env: options.env,
        instances: Vec::new(),
        http_ports: Vec::new(),
        refetchers: Vec::new(),
    };
    for _ in 0..options.instances {
        billing.start_instance().await;
    }
    billing
}

impl TestBilling {
    /// The URL billing instances use (through the proxy when there is one).
    pub fn database_url(&self) -> String {
        self.database_url.clone()
    }

    /// Starts one more billing process (in-process) on this database and vhost.
    pub async fn start_instance(&mut self) {
        let env = Env::from_pairs(
            [
                ("DATABASE_URL", self.database_url.clone()),
                ("AMQP_URL", self.vhost.amqp_url()),
                ("BILLING_MAX_ATTEMPTS", self.max_attempts.to_string()),
                ("BILLING_ADDR", "127.0.0.1:0".to_string()),
                ("DATABASE_MAX_CONNECTIONS", "4".to_string()),
                ("TOLLGATE_PLANS", self.plans_path.clone()),
            ]
            .into_iter()
            .chain(self.env.iter().cloned()),
        );
        let app = Application::build(Config::from_env(&env).unwrap())
            .await
            .expect("billing starts");
        assert!(
            app.wait_consuming(Duration::from_secs(20)).await,
            "billing consuming"
        );
        let stopper = app.stopper();
        self.http_ports.push(app.http_port());
        self.refetchers.push(app.refetcher());
        self.instances
            .push((stopper, tokio::spawn(app.run_until_stopped())));
    }

    /// Publishes `body` as ingest would.
    pub async fn publish_event(&self, id: &str, event_type: &str, body: &[u8]) {
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_type(event_type.into())
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        self.publisher
            .publish(EVENTS_EXCHANGE, event_type, body, properties)
            .await
            .expect("published");
    }

    /// Stops every billing instance gracefully (in-flight events settle first).
    pub async fn stop(&mut self) {
        for (stopper, _) in &self.instances {
            stopper.stop();
        }
        for (_, task) in self.instances.drain(..) {
            task.await.unwrap().unwrap();
        }
    }

    pub async fn broker(&self) -> Connection {
        Connection::connect(
            &self.vhost.amqp_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap()
    }

    /// Ready (unconsumed, or returned unacknowledged) messages in `queue`.
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let connection = self.broker().await;
        let channel = connection.create_channel().await.unwrap();
        let count = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        connection.close(200, "done".into()).await.ok();
        count
    }

    /// Rows in `dead_letters` (messages billing gave up on).
    pub async fn dead_letter_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM dead_letters")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM stripe_events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Polls `check` every 50 ms until it is true; panics after `timeout`.
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A minimal valid event of any type.
pub fn event(event_type: &str) -> (String, Vec<u8>) {
    let id = format!("evt_test_{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::json!({
        "id": id, "object": "event", "type": event_type, "created": 1_700_000_000,
        "livemode": false, "api_version": "2025-03-31.basil", "data": { "object": {} }
    });
    (id, serde_json::to_vec(&body).unwrap())
}

pub fn plans_path() -> String {
    format!(
        "{}/config/plans.toml",
        tollgate_test_support::workspace_root().display()
    )
}
