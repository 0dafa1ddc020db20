use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties, Consumer};
use tollgate_events::topology::EVENTS_EXCHANGE;
use tollgate_ingest::{Application, Config};
use tollgate_runtime::Env;
use tollgate_test_support::{TcpProxy, TestVhost, amqp, signed_headers};

pub const SECRET: &str = "whsec_test_primary";
pub const INVOICE_PAID: &str = "complete/invoice.paid.stripe-sync-engine.json";

pub struct TestApp {
    pub address: String,
    pub vhost: TestVhost,
    pub client: reqwest::Client,
    pub handle: actix_web::dev::ServerHandle,
    /// Present when the app reaches the broker through a cuttable proxy.
    pub proxy: Option<TcpProxy>,
}

pub struct Options {
    pub secrets: String,
    pub via_proxy: bool,
    pub livemode: bool,
    pub confirm_timeout_ms: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            secrets: SECRET.into(),
            via_proxy: false,
            livemode: false,
            confirm_timeout_ms: 5000,
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let vhost = TestVhost::create();
    let proxy = if options.via_proxy {
        Some(TcpProxy::start("127.0.0.1:5672").await)
    } else {
        None
    };
    let amqp_url = match &proxy {
        Some(proxy) => vhost.amqp_url_via(&proxy.addr()),
        None => vhost.amqp_url(),
    };
    let livemode = options.livemode.to_string();
    let confirm_timeout = options.confirm_timeout_ms.to_string();
    let env = Env::from_pairs([
        ("INGEST_ADDR", "127.0.0.1:0"),
        ("AMQP_URL", amqp_url.as_str()),
        ("STRIPE_WEBHOOK_SECRET", options.secrets.as_str()),
        ("STRIPE_LIVEMODE", livemode.as_str()),
        ("AMQP_CONFIRM_TIMEOUT_MS", confirm_timeout.as_str()),
        ("INGEST_WORKERS", "1"),
        ("SHUTDOWN_TIMEOUT_SECS", "5"),
    ]);
    let app = Application::build(Config::from_env(&env).expect("valid test config"))
        .expect("ingest starts");
    assert!(
        app.publisher().wait_ready(Duration::from_secs(20)).await,
        "ingest connected to the broker"
    );
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        vhost,
        client: reqwest::Client::new(),
        handle,
        proxy,
    }
}

impl TestApp {
    pub async fn post_webhook(&self, body: &[u8], signature: Option<&str>) -> reqwest::Response {
        self.post_to("/webhook", body, signature).await
    }

    pub async fn post_to(
        &self,
        path: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(format!("{}{path}", self.address))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        request.send().await.expect("request sent")
    }

    pub async fn post_signed(&self, body: &[u8]) -> reqwest::Response {
        self.post_webhook(body, Some(&signed_headers(SECRET, body)))
            .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request sent")
    }

    /// A connection straight to the broker (never through the proxy).
    pub async fn broker(&self) -> Connection {
        Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("test connects to its vhost")
    }

    /// See [`tap`].
    pub async fn tap(&self, connection: &Connection) -> (Channel, Consumer) {
        tap(connection).await
    }
}

/// A tap on the events exchange for every routing key (see `tollgate_test_support::amqp`).
pub async fn tap(connection: &Connection) -> (Channel, Consumer) {
    amqp::tap(connection, EVENTS_EXCHANGE, "#").await
}

/// Next message on the tap, acknowledged; panics after 10 s.
pub async fn next_delivery(consumer: &mut Consumer) -> lapin::message::Delivery {
    amqp::next_delivery(consumer, Duration::from_secs(10)).await
}

/// Polls `path` until it answers `status`, for up to 15 s.
pub async fn wait_for_status(app: &TestApp, path: &str, status: u16) {
    for _ in 0..150 {
        if app.get(path).await.status().as_u16() == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never answered {status}");
}

/// The real `ingest` executable as a child process (JSON logs captured).
pub struct TestAppBinary {
    pub base: String,
    pub vhost: TestVhost,
    pub child: tokio::process::Child,
    pub stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Every log line read so far.
    pub lines: Vec<String>,
    pub client: reqwest::Client,
}

impl TestAppBinary {
    /// Starts `ingest` with a clean environment plus `extra`, waits until ready.
    pub async fn spawn(extra: &[(&str, String)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let vhost = TestVhost::create();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_ingest"));
        command
            .env_clear()
            .env("AMQP_URL", vhost.amqp_url())
            .env("STRIPE_WEBHOOK_SECRET", SECRET)
            .env("INGEST_ADDR", "127.0.0.1:0")
            .env("INGEST_WORKERS", "1")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("ingest binary starts");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut lines = Vec::new();
        // The "listening" line tells the port picked for 127.0.0.1:0.
        let port = loop {
            let line = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
                .await
                .expect("ingest logs within 20 s")
                .unwrap()
                .expect("ingest still running");
            let json: serde_json::Value =
                serde_json::from_str(&line).expect("every log line is JSON");
            lines.push(line);
            if json["message"] == "ingest listening" {
                break json["port"].as_u64().unwrap();
            }
        };
        let app = Self {
            base: format!("http://127.0.0.1:{port}"),
            vhost,
            child,
            stdout,
            lines,
            client: reqwest::Client::new(),
        };
        for _ in 0..200 {
            let ready = app.client.get(format!("{}/readyz", app.base)).send().await;
            if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                return app;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ingest binary never became ready");
    }

    pub async fn post(&self, body: &[u8], signature: &str) -> reqwest::Response {
        self.client
            .post(format!("{}/webhook", self.base))
            .header("Stripe-Signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .expect("request sent")
    }

    pub async fn broker(&self) -> Connection {
        Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("test connects to its vhost")
    }

    /// SIGTERM, then waits (20 s at most) for a clean exit and the remaining logs.
    pub async fn terminate(&mut self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("exits within 20 s of SIGTERM")
            .unwrap();
        assert!(exit.success(), "clean exit: {exit:?}");
        while let Some(line) = self.stdout.next_line().await.unwrap() {
            self.lines.push(line);
        }
    }
}
