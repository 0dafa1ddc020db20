//! Building and running the ingest HTTP server (the shape tests drive).

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use tollgate_broker::{Publisher, PublisherConfig};

use crate::config::Config;
use crate::routes::{IngestState, healthz, metrics, readyz, receive_webhook};

pub struct Application {
    port: u16,
    server: Server,
    publisher: Publisher,
}

impl Application {
    /// Binds the listener and starts connecting to the broker. Does not wait for
    /// the broker: until it is reachable, webhooks get 503 and `/readyz` says so.
    pub fn build(config: Config) -> std::io::Result<Self> {
        // Install the process-wide recorder before anything records.
        tollgate_runtime::telemetry::metrics_handle();
        let publisher = Publisher::start(PublisherConfig {
            url: config.amqp_url.clone(),
            connection_name: "tollgate-ingest".into(),
            channels: config.publish_channels,
            confirm_timeout: config.confirm_timeout,
            declare_topology: true,
        });
        let state = web::Data::new(IngestState {
            secrets: config.webhook_secrets.clone(),
            tolerance_secs: config.tolerance_secs,
            livemode: config.livemode,
            publisher: publisher.clone(),
        });
        let listener = TcpListener::bind(config.addr)?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/webhook", web::post().to(receive_webhook))
                .route("/webhooks/stripe", web::post().to(receive_webhook))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
        })
        // We handle SIGTERM ourselves so the broker connection closes after the drain.
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs());
        if let Some(workers) = config.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(addr = %config.addr, port, "ingest listening");
        Ok(Self {
            port,
            server,
            publisher,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// A handle to stop the server gracefully (used by tests and `run_until_signal`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped through `handle()`; then waits for in-flight requests
    /// (and so their broker confirms) and closes the broker connection.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.publisher.close().await;
        tracing::info!("ingest stopped");
        result
    }

    /// Serves until SIGTERM / SIGINT, then shuts down gracefully.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        let handle = self.handle();
        tokio::spawn(async move {
            tollgate_runtime::shutdown::signal().await;
            // Stop accepting, let in-flight requests finish (bounded by the shutdown timeout).
            handle.stop(true).await;
        });
        self.run_until_stopped().await
    }
}
