//! Building and running the entitlements server (the shape tests drive).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tollgate_plans::Plans;
use tollgate_proto::entitlements::v1::entitlements_server::EntitlementsServer;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::Config;
use crate::credits::Credits;
use crate::feed::Feed;
use crate::quotas::Quotas;
use crate::service::{EntitlementsService, State};
use crate::test_users::{self, TestUsers};

/// Largest request message accepted, encoded (tonic's default is 4 MiB). The largest
/// legitimate request, a CheckBatch of 100 features of 200 bytes, is about 21 KiB; a
/// bigger one is refused (`OUT_OF_RANGE`) before it is buffered whole.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Concurrent streams per HTTP/2 connection. tonic passes "no limit" to hyper unless told
/// otherwise, and each open Watch holds a task and a queue: one connection could
/// otherwise hold any number of them. hyper's own default.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 200;

pub struct Application {
    addr: SocketAddr,
    metrics_addr: SocketAddr,
    stop: watch::Sender<bool>,
    feed: Arc<Feed>,
    pool: PgPool,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                o.parse::<http::HeaderValue>()
                    .with_context(|| format!("ENTITLEMENTS_CORS_ORIGINS: `{o}`"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    let header = http::HeaderName::from_static;
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers([
            header("authorization"),
            header("content-type"),
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header("x-tollgate-error"),
        ])
        .max_age(Duration::from_secs(3600)))
}

impl Application {
    /// Binds the listener and starts serving; the feed, caches and stores connect
    /// in the background (until they do, answers are degraded, never wrong).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        tollgate_runtime::telemetry::metrics_handle();
        let plans = Arc::new(
            Plans::load(Some(&config.plans_path)).context("TOLLGATE_PLANS (the plans file)")?,
        );
        let options: PgConnectOptions = config.database_url.parse().context("DATABASE_URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(config.database_max_connections)
            .acquire_timeout(Duration::from_secs(2))
            .connect_lazy_with(options);
        let (stop, stop_rx) = watch::channel(false);
        let cache = Arc::new(Cache::new(config.negative_ttl, config.cache_max_age));
        let (feed, reload) = Feed::new(
            pool.clone(),
            cache.clone(),
            config.gap_timeout,
            config.poll_interval,
        );
        let test_users = TestUsers::default();
        if let Ok(rules) = test_users::load(&pool).await {
            test_users.replace(rules);
        }
        let mut tasks = vec![
            tokio::spawn(feed.clone().run(config.amqp_url.clone(), stop_rx.clone())),
            tokio::spawn(feed.clone().resolve_gaps(stop_rx.clone())),
            tokio::spawn(feed.clone().reload_customers(reload)),
            tokio::spawn(test_users::keep_loaded(
                pool.clone(),
                test_users.clone(),
                stop_rx.clone(),
            )),
        ];
        let quotas =
            Arc::new(Quotas::new(&config.redis_url, &config.redis_prefix).context("REDIS_URL")?);
        let credits = Credits::start(pool.clone(), stop_rx.clone());
        let state = Arc::new(State {
            plans,
            enforcement: config.enforcement,
            pool: pool.clone(),
            cache,
            feed: feed.clone(),
            test_users,
            quotas,
            credits,
            auth: Auth::new(&config),
            max_wait: config.max_wait,
            store_timeout: config.store_timeout,
            reservation_ttl: config.reservation_ttl,
            stopping: stop_rx.clone(),
        });

        // The process is up ("" SERVING); the Entitlements service reports SERVING only
        // while its answers can be trusted fresh (readiness), NOT_SERVING otherwise.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<EntitlementsServer<EntitlementsService>>()
            .await;
        tasks.push(tokio::spawn(report_health(
            health,
            feed.clone(),
            stop_rx.clone(),
        )));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tollgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("reflection service")?;
        let routes = Routes::builder()
            .add_service(
                EntitlementsServer::new(EntitlementsService::new(state))
                    .max_decoding_message_size(MAX_REQUEST_BYTES),
            )
            .add_service(health_service)
            .add_service(reflection)
            .clone()
            .routes();

        let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| {
                format!("binding ENTITLEMENTS_METRICS_ADDR {}", config.metrics_addr)
            })?;
        let metrics_addr = metrics_listener.local_addr()?;
        let metrics = axum::Router::new().route(
            "/metrics",
            get(|| async { tollgate_runtime::telemetry::metrics_handle().render() }),
        );
        let mut metrics_stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let served = axum::serve(metrics_listener, metrics)
                .with_graceful_shutdown(async move {
                    let _ = metrics_stop.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        }));

        let listener = tokio::net::TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding ENTITLEMENTS_ADDR {}", config.addr))?;
        let addr = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut shutdown = stop_rx.clone();
        let server = Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(cors(&config.cors_origins)?)
            .layer(tonic_web::GrpcWebLayer::new())
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            });
        let server = tokio::spawn(server);
        tracing::info!(%addr, %metrics_addr, "entitlements listening");
        Ok(Self {
            addr,
            metrics_addr,
            stop,
            feed,
            pool,
            server,
            shutdown_timeout: config.shutdown_timeout,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `GET /metrics` is served.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Waits until the change feed is bound and caught up (answers are fresh).
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.feed.is_live() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn stopper(&self) -> Stopper {
        Stopper(self.stop.clone())
    }

    /// Serves until stopped; in-flight calls get `SHUTDOWN_TIMEOUT_SECS` to finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut server = self.server;
        let mut stopping = self.stop.subscribe();
        let timeout = self.shutdown_timeout;
        let served = tokio::select! {
            served = &mut server => served.context("server task")?,
            () = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(timeout).await;
            } => {
                tracing::warn!(?timeout, "calls still in flight after the shutdown timeout; closing");
                server.abort();
                Ok(())
            }
        };
        self.stop.send_replace(true);
        for task in self.tasks {
            // The reload task ends when the feed (its sender) is dropped.
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.pool.close().await;
        tracing::info!("entitlements stopped");
        served.context("serving")
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

async fn report_health(
    health: tonic_health::server::HealthReporter,
    feed: Arc<Feed>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = None;
    loop {
        let fresh = feed.is_fresh();
        if serving != Some(fresh) {
            if fresh {
                health
                    .set_serving::<EntitlementsServer<EntitlementsService>>()
                    .await;
            } else {
                tracing::warn!("answers cannot be confirmed fresh; health NOT_SERVING");
                health
                    .set_not_serving::<EntitlementsServer<EntitlementsService>>()
                    .await;
            }
            serving = Some(fresh);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
