//! A confirmed publisher that keeps itself connected.
//!
//! `publish` returns `Ok` only when the broker has confirmed the message (it is
//! then on disk in a quorum queue's majority) and it was routed to a queue. A
//! nack, a returned (unroutable) message, a confirm timeout, or no connection is
//! an error the caller turns into "try again later".
//!
//! A supervisor task owns the connection: it connects, declares the topology,
//! opens a few confirm-mode channels, and reconnects with capped exponential
//! backoff whenever the connection fails or a publish reveals it is broken.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, Event};
use tokio::sync::{Notify, watch};
use tollgate_runtime::config::redact_url;
use tracing::{info, warn};

#[derive(Clone)]
pub struct PublisherConfig {
    pub url: String,
    /// Shown in the broker's management UI.
    pub connection_name: String,
    /// Channels published on round-robin; each carries many confirms in flight.
    pub channels: usize,
    pub confirm_timeout: Duration,
    /// Declare the shared topology on every (re)connect.
    pub declare_topology: bool,
}

impl std::fmt::Debug for PublisherConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfig")
            .field("url", &redact_url(&self.url))
            .field("connection_name", &self.connection_name)
            .field("channels", &self.channels)
            .field("confirm_timeout", &self.confirm_timeout)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("the broker connection failed during publish: {0}")]
    Connection(#[from] lapin::Error),
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no queue is bound for the message (returned as unroutable)")]
    Unroutable,
    #[error("the channel is not in confirm mode")]
    NotConfirmed,
}

impl PublishError {
    /// Stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConnected => "not_connected",
            Self::Connection(_) => "connection",
            Self::ConfirmTimeout(_) => "confirm_timeout",
            Self::Nacked => "nack",
            Self::Unroutable => "unroutable",
            Self::NotConfirmed => "not_confirmed",
        }
    }
}

struct Session {
    connection: Connection,
    channels: Vec<Channel>,
    next: AtomicUsize,
    /// A publish saw this session fail: reconnect now, do not wait for the
    /// heartbeat. Per session, so a late signal about an old session can never
    /// tear down its replacement.
    broken: Notify,
}

impl Session {
    fn channel(&self) -> &Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.channels.len();
        &self.channels[i]
    }
}

struct Inner {
    config: PublisherConfig,
    session: watch::Sender<Option<Arc<Session>>>,
    stop: watch::Sender<bool>,
}

/// Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

impl Publisher {
    /// Starts the connection supervisor on the current Tokio runtime and returns at
    /// once; `is_ready` turns true when the first connection is up.
    pub fn start(config: PublisherConfig) -> Self {
        assert!(
            config.channels > 0,
            "a publisher needs at least one channel"
        );
        let inner = Arc::new(Inner {
            config,
            session: watch::Sender::new(None),
            stop: watch::Sender::new(false),
        });
        tokio::spawn(supervise(inner.clone()));
        Self { inner }
    }

    /// True while a connection with open channels is in place.
    pub fn is_ready(&self) -> bool {
        self.inner
            .session
            .borrow()
            .as_ref()
            .is_some_and(|s| s.connection.status().connected())
    }

    /// Waits until connected, or until `timeout` passes; returns whether connected.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.session.subscribe();
        // A lost session stays in place until the supervisor swaps it: wait for a live one.
        let live = |s: &Option<Arc<Session>>| {
            s.as_ref()
                .is_some_and(|s| s.connection.status().connected())
        };
        tokio::time::timeout(timeout, rx.wait_for(live))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Publishes a mandatory message and waits for the broker's confirm: an
    /// unroutable message is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_confirmed(exchange, routing_key, payload, properties, true)
            .await
    }

    /// Like `publish`, for announcements nobody may be listening to (a fanout
    /// with no queue bound yet): confirmed, but not mandatory.
    pub async fn broadcast(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.publish_confirmed(exchange, routing_key, payload, properties, false)
            .await
    }

    /// Broadcasts several messages on one channel, so they reach the queues in
    /// this order, with their confirms in flight together (one round of waiting,
    /// not one per message). `Ok` when every one was confirmed; on an error some
    /// may have been delivered, so callers must tolerate publishing them again.
    pub async fn broadcast_in_order(
        &self,
        exchange: &str,
        messages: Vec<(Vec<u8>, BasicProperties)>,
    ) -> Result<(), PublishError> {
        let session = self.live_session()?;
        let started = Instant::now();
        let channel = session.channel();
        let mut confirms = Vec::with_capacity(messages.len());
        let mut result = Ok(());
        for (payload, properties) in messages {
            match channel
                .basic_publish(
                    exchange.into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &payload,
                    properties,
                )
                .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => {
                    result = Err(PublishError::Connection(e));
                    break;
                }
            }
        }
        let timeout = self.inner.config.confirm_timeout;
        let all = futures_util::future::join_all(confirms);
        if result.is_ok() {
            result = match tokio::time::timeout(timeout, all).await {
                Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
                Ok(confirmations) => confirmations.into_iter().try_for_each(|c| match c {
                    Err(e) => Err(PublishError::Connection(e)),
                    Ok(Confirmation::Ack(_)) => Ok(()),
                    Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
                    Ok(Confirmation::NotRequested) => Err(PublishError::NotConfirmed),
                }),
            };
        }
        self.observe(&session, started, result)
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let session = self.live_session()?;
        let started = Instant::now();
        let result = self
            .publish_on(
                &session,
                exchange,
                routing_key,
                payload,
                properties,
                mandatory,
            )
            .await;
        self.observe(&session, started, result)
    }

    async fn publish_on(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = session
            .channel()
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                payload,
                properties,
            )
            .await?;
        let timeout = self.inner.config.confirm_timeout;
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(PublishError::ConfirmTimeout(timeout)),
            Ok(Err(e)) => Err(PublishError::Connection(e)),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::NotConfirmed),
        }
    }

    /// The current session, if its connection is up. A lost one the supervisor has
    /// not swapped out yet is reported broken, so publishing fails fast.
    fn live_session(&self) -> Result<Arc<Session>, PublishError> {
        let session = self
            .inner
            .session
            .borrow()
            .clone()
            .ok_or(PublishError::NotConnected)?;
        if !session.connection.status().connected() {
            self.mark_broken(&session);
            return Err(PublishError::NotConnected);
        }
        Ok(session)
    }

    /// Records a publish's confirm latency and failure, and reports a connection
    /// that failed during it.
    fn observe(
        &self,
        session: &Session,
        started: Instant,
        result: Result<(), PublishError>,
    ) -> Result<(), PublishError> {
        metrics::histogram!("tollgate_broker_publish_confirm_seconds")
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!("tollgate_broker_publish_failures_total", "reason" => error.reason())
                .increment(1);
            if matches!(error, PublishError::Connection(_)) {
                self.mark_broken(session);
            }
        }
        result
    }

    fn mark_broken(&self, session: &Session) {
        session.broken.notify_one();
    }

    /// Stops reconnecting and closes the connection. Call after in-flight
    /// publishes have finished (the HTTP server has drained).
    pub async fn close(&self) {
        self.inner.stop.send_replace(true);
        let mut rx = self.inner.session.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_none)).await;
    }
}

type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = Event> + Send>>;

async fn open_session(config: &PublisherConfig) -> Result<(Arc<Session>, Events), lapin::Error> {
    let connection = crate::connect(&config.url, &config.connection_name).await?;
    let events: Events = Box::pin(connection.events_listener());
    if config.declare_topology {
        let channel = connection.create_channel().await?;
        crate::declare_topology(&channel).await?;
        let _ = channel.close(200, "topology declared".into()).await;
    }
    let mut channels = Vec::with_capacity(config.channels);
    for _ in 0..config.channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let session = Arc::new(Session {
        connection,
        channels,
        next: AtomicUsize::new(0),
        broken: Notify::new(),
    });
    Ok((session, events))
}

async fn supervise(inner: Arc<Inner>) {
    const MIN_BACKOFF: Duration = Duration::from_millis(100);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    let mut stop = inner.stop.subscribe();
    let target = redact_url(&inner.config.url);
    loop {
        if *stop.borrow() {
            break;
        }
        match open_session(&inner.config).await {
            Ok((session, mut events)) => {
                backoff = MIN_BACKOFF;
                inner.session.send_replace(Some(session.clone()));
                metrics::gauge!("tollgate_broker_connected").set(1.0);
                info!(broker = %target, "connected to the broker");
                let stopping = tokio::select! {
                    reason = async {
                        while let Some(event) = events.next().await {
                            if let Event::Error(error) = event {
                                return error.to_string();
                            }
                        }
                        "event stream ended".to_string()
                    } => {
                        warn!(broker = %target, error = %reason, "broker connection lost; reconnecting");
                        false
                    }
                    () = session.broken.notified() => {
                        warn!(broker = %target, "publish failed on the connection; reconnecting");
                        false
                    }
                    _ = stop.wait_for(|s| *s) => true,
                };
                inner.session.send_replace(None);
                metrics::gauge!("tollgate_broker_connected").set(0.0);
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    session.connection.close(200, "closing".into()),
                )
                .await;
                if stopping {
                    break;
                }
            }
            Err(error) => {
                warn!(broker = %target, %error, retry_in_ms = backoff.as_millis() as u64, "broker unavailable");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    inner.session.send_replace(None);
}
