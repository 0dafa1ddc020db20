//! Building and running the billing consumer (the shape tests drive).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::watch;
use tollgate_broker::{Publisher, PublisherConfig};
use tollgate_plans::Plans;
use tollgate_stripe::Refetcher;

use crate::config::Config;
use crate::consumer::Consumer;
use crate::db;

pub struct Application {
    pool: PgPool,
    refetcher: Arc<Refetcher>,
    publisher: Publisher,
    consuming: watch::Receiver<bool>,
    stop: watch::Sender<bool>,
    consumer: tokio::task::JoinHandle<()>,
    relay: Option<tokio::task::JoinHandle<()>>,
    retention: Option<tokio::task::JoinHandle<()>>,
    gauges: tokio::task::JoinHandle<()>,
    http: actix_web::dev::Server,
    http_port: u16,
    /// The HTTP API (when configured) and its port.
    api: Option<(actix_web::dev::Server, u16)>,
    emails: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Applies migrations (unless disabled) and starts consuming.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        tollgate_runtime::telemetry::metrics_handle();
        let plans = Arc::new(
            Plans::load(Some(&config.plans_path)).context("TOLLGATE_PLANS (the plans file)")?,
        );
        let pool = db::pool(&config.database_url, config.database_max_connections)
            .context("DATABASE_URL")?;
        let refetcher = Arc::new(
            Refetcher::from_config(&config.stripe).context("the Stripe client (STRIPE_*)")?,
        );
        if config.migrate {
            db::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
        }
        let publisher = Publisher::start(PublisherConfig {
            url: config.amqp_url.clone(),
            connection_name: "tollgate-billing-publisher".into(),
            channels: 1,
            confirm_timeout: Duration::from_secs(10),
            declare_topology: true,
        });
        let (consuming_tx, consuming) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let consumer = Arc::new(Consumer {
            pool: pool.clone(),
            plans: plans.clone(),
            refetcher: refetcher.clone(),
            publisher: publisher.clone(),
            amqp_url: config.amqp_url.clone(),
            prefetch: config.prefetch,
            workers: config.workers,
            batch_max: config.batch_max,
            max_attempts: config.max_attempts,
            consuming: consuming_tx,
        });
        let relay = config.outbox_relay.then(|| {
            tokio::spawn(crate::outbox::relay(
                pool.clone(),
                publisher.clone(),
                stop_rx.clone(),
            ))
        });
        let payload_age = (config.payload_retention_days > 0)
            .then(|| Duration::from_secs(u64::from(config.payload_retention_days) * 86_400));
        let retention = Some(tokio::spawn(crate::retention::run(
            pool.clone(),
            payload_age,
            stop_rx.clone(),
        )));
        let gauges = tokio::spawn(crate::gauges::run(
            pool.clone(),
            config.amqp_url.clone(),
            config.gauges_interval,
            stop_rx.clone(),
        ));
        let emails = match &config.email.smtp {
            Some(smtp) => {
                tracing::info!(smtp = ?smtp, "payment emails are sent over SMTP");
                let sender = crate::emails::sender::SenderConfig {
                    smtp: smtp.clone(),
                    from: config.email.from.clone(),
                    max_attempts: config.email.max_attempts,
                    retry_base: config.email.retry_base,
                };
                Some(tokio::spawn(crate::emails::sender::run(
                    pool.clone(),
                    sender,
                    stop_rx.clone(),
                )))
            }
            None => {
                tracing::warn!(
                    "SMTP_URL is not set: payment emails are queued in email_outbox but not sent"
                );
                None
            }
        };
        let consumer = tokio::spawn(consumer.run(stop_rx));
        let listener = std::net::TcpListener::bind(config.addr)
            .with_context(|| format!("BILLING_ADDR {}", config.addr))?;
        let http_port = listener.local_addr()?.port();
        let http = crate::http::serve(listener, pool.clone(), consuming.clone())?;
        tracing::info!(addr = %config.addr, port = http_port, "billing probes and metrics listening");
        let api = start_api(&config, pool.clone(), plans.clone())?;
        Ok(Self {
            http,
            api,
            http_port,
            pool,
            refetcher,
            publisher,
            consuming,
            stop,
            consumer,
            relay,
            retention,
            gauges,
            emails,
        })
    }

    /// The port of `/healthz`, `/readyz` and `/metrics`.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The port of the HTTP API, when it runs (`BILLING_API_*` configured).
    pub fn api_port(&self) -> Option<u16> {
        self.api.as_ref().map(|(_, port)| *port)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The Stripe refetcher (its per-outcome counts are what tests assert).
    pub fn refetcher(&self) -> Arc<Refetcher> {
        self.refetcher.clone()
    }

    /// Waits until the consumer is attached to the queue (and the publisher connected).
    pub async fn wait_consuming(&self, timeout: Duration) -> bool {
        let mut consuming = self.consuming.clone();
        let attached = tokio::time::timeout(timeout, consuming.wait_for(|c| *c))
            .await
            .is_ok();
        attached && self.publisher.wait_ready(timeout).await
    }

    /// Something to call `stop()` on from elsewhere (tests, the signal handler).
    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Runs until stopped; in-flight events finish and are acknowledged first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let http_handle = self.http.handle();
        let http = tokio::spawn(self.http);
        let api = self
            .api
            .map(|(server, _)| (server.handle(), tokio::spawn(server)));
        self.consumer.await.context("consumer task")?;
        if let Some(relay) = self.relay {
            relay.await.context("outbox relay task")?;
        }
        if let Some(retention) = self.retention {
            retention.await.context("retention task")?;
        }
        self.gauges.await.context("gauges task")?;
        if let Some(emails) = self.emails {
            emails.await.context("email sender task")?;
        }
        if let Some((handle, task)) = api {
            handle.stop(true).await;
            let _ = task.await;
        }
        http_handle.stop(true).await;
        let _ = http.await;
        self.publisher.close().await;
        self.pool.close().await;
        tracing::info!("billing stopped");
        Ok(())
    }

    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let stopper = self.stopper();
        tokio::spawn(async move {
            tollgate_runtime::shutdown::signal().await;
            stopper.stop();
        });
        self.run_until_stopped().await
    }
}

/// Binds and starts the HTTP API when a way to authenticate is configured.
fn start_api(
    config: &Config,
    pool: PgPool,
    plans: Arc<Plans>,
) -> anyhow::Result<Option<(actix_web::dev::Server, u16)>> {
    if !config.api.enabled() {
        tracing::info!("BILLING_API_* sets no token or JWT key: the HTTP API is off");
        return Ok(None);
    }
    let account = match (
        &config.account,
        tollgate_stripe::StripeClient::from_config(&config.stripe)
            .context("the Stripe client (STRIPE_*)")?,
    ) {
        (Some(settings), Some(client)) => Some(crate::account::Account::new(
            pool.clone(),
            plans.clone(),
            client,
            settings.clone(),
        )),
        _ => {
            tracing::warn!(
                "without STRIPE_SECRET_KEY and CHECKOUT_SUCCESS_URL / CHECKOUT_CANCEL_URL / PORTAL_RETURN_URL \
                 the API answers checkout and portal requests with 503"
            );
            None
        }
    };
    let listener = std::net::TcpListener::bind(config.api.addr)
        .with_context(|| format!("BILLING_API_ADDR {}", config.api.addr))?;
    let port = listener.local_addr()?.port();
    let state =
        crate::api::ApiState::new(&config.api, pool, plans, account, config.amqp_url.clone());
    let server = crate::api::serve(listener, state, &config.api)?;
    tracing::info!(addr = %config.api.addr, port, "billing HTTP API listening");
    Ok(Some((server, port)))
}

#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
