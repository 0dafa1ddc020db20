//! Building and running the fulfillment HTTP server (the shape tests drive).

use std::net::TcpListener;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tollgate_plans::Plans;

use crate::answers::Responder;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::routes::{State, healthz, metrics, readyz, webhook};
use crate::upstream::{Billing, Entitlements};

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Loads the plans file, binds the listener and starts serving. Entitlements and
    /// billing are reached lazily: until they answer, turns get the fallback text.
    pub fn build(config: Config) -> anyhow::Result<Self> {
        // Install the process-wide recorder before anything records.
        tollgate_runtime::telemetry::metrics_handle();
        let plans =
            Plans::load(Some(&config.plans_path)).context("TOLLGATE_PLANS (the plans file)")?;
        let upgrade_plan = match &config.upgrade_plan {
            Some(key) => {
                plans.price_by_key(key).with_context(|| {
                    format!("FULFILLMENT_UPGRADE_PLAN: `{key}` is not a plan key in the plans file")
                })?;
                key.clone()
            }
            // The first step up: the lowest-ranked tier for sale, then by key.
            None => crate::answers::plans_for_sale(&plans)
                .first()
                .and_then(|p| p.key.clone())
                .context("the plans file sells no plan (no price has a `key`)")?,
        };
        let entitlements = Entitlements::new(
            &config.entitlements_url,
            &config.entitlements_token,
            config.upstream_timeout,
        )
        .context("FULFILLMENT_ENTITLEMENTS_URL")?;
        let billing = match (&config.billing_api_url, &config.billing_api_token) {
            (Some(url), Some(token)) => {
                Some(Billing::new(url, token).context("the billing API client")?)
            }
            _ => None,
        };
        let state = web::Data::new(State {
            auth: Authenticator::new(config.basic_auth.as_ref(), config.header_token.as_ref()),
            responder: Responder {
                intents: config.intents.clone(),
                plans,
                entitlements,
                billing,
                billing_page_url: config.billing_page_url.clone(),
                upgrade_plan,
                per_call: config.upstream_timeout,
            },
        });
        let listener = TcpListener::bind(config.addr)
            .with_context(|| format!("binding FULFILLMENT_ADDR {}", config.addr))?;
        let port = listener.local_addr()?.port();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .route("/webhook", web::post().to(webhook))
                .route("/healthz", web::get().to(healthz))
                .route("/readyz", web::get().to(readyz))
                .route("/metrics", web::get().to(metrics))
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs());
        if let Some(workers) = config.workers {
            server = server.workers(workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(addr = %config.addr, port, "fulfillment listening");
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle to stop the server gracefully (tests and `run_until_signal`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        tracing::info!("fulfillment stopped");
        result
    }

    /// Serves until SIGTERM / SIGINT, then lets in-flight turns finish.
    pub async fn run_until_signal(self) -> std::io::Result<()> {
        let handle = self.handle();
        tokio::spawn(async move {
            tollgate_runtime::shutdown::signal().await;
            handle.stop(true).await;
        });
        self.run_until_stopped().await
    }
}
