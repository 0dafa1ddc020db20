//! The queue consumer: manual acks, bounded prefetch, reconnects on its own.
//!
//! Every delivery ends in exactly one of: applied (ack), duplicate (ack),
//! transient failure (copied to the delay queue for its attempt, then ack),
//! poison or out of attempts (copied to the dead-letter queue with its error and
//! recorded for review, then ack). A delivery is acknowledged only after its
//! outcome is durable, so a crash at any point means redelivery, never loss; the
//! ledger turns the redelivery into a no-op.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tollgate_broker::{Publisher, lapin};
use tollgate_events::topology::{self, headers};
use tollgate_plans::Plans;
use tollgate_stripe::Refetcher;
use tracing::{Instrument, debug, error, info, warn};

use crate::acks::Acks;
use crate::process::{self, Decoded, ProcessError};

pub struct Consumer {
    pub pool: PgPool,
    pub plans: Arc<Plans>,
    /// Settles ambiguous same-second ties from the Stripe API (when configured).
    pub refetcher: Arc<Refetcher>,
    /// Confirmed publishes of retries and dead letters.
    pub publisher: Publisher,
    pub amqp_url: String,
    pub prefetch: u16,
    /// Transactions in flight at once.
    pub workers: u16,
    /// Most events applied in one transaction.
    pub batch_max: u16,
    pub max_attempts: u32,
    /// True while consuming.
    pub consuming: watch::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    Cancelled,
}

enum Settle {
    Ack,
    /// The outcome could not be made durable: let the broker redeliver.
    Requeue,
}

impl Consumer {
    /// Consumes until `stop` turns true; then finishes in-flight events and returns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            match self.clone().session(&mut stop).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "billing consumer disconnected")
                }
            }
            self.consuming.send_replace(false);
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(
        self: Arc<Self>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), SessionError> {
        let connection = tollgate_broker::connect(&self.amqp_url, "tollgate-billing").await?;
        let channel = connection.create_channel().await?;
        tollgate_broker::declare_topology(&channel).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                topology::BILLING_QUEUE.into(),
                "tollgate-billing".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let (acks, settling) = Acks::start(channel.clone());
        self.consuming.send_replace(true);
        info!(
            prefetch = self.prefetch,
            workers = self.workers,
            batch_max = self.batch_max,
            "billing consuming"
        );
        // Deliveries wait here while every worker is busy, and leave as one batch
        // (one transaction) when a worker frees up: batches grow with the load,
        // and an idle consumer applies a lone event at once.
        let mut waiting: Vec<Delivery> = Vec::new();
        let mut in_flight = JoinSet::new();
        let result = loop {
            while !waiting.is_empty() && in_flight.len() < usize::from(self.workers) {
                let take = waiting.len().min(usize::from(self.batch_max));
                let batch: Vec<Delivery> = waiting.drain(..take).collect();
                in_flight.spawn(self.clone().handle_batch(batch, acks.clone()));
            }
            tokio::select! {
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        acks.track(delivery.delivery_tag);
                        waiting.push(delivery);
                        // Take whatever else has already arrived before dispatching.
                        let mut ended = None;
                        while waiting.len() < usize::from(self.batch_max) {
                            match deliveries.next().now_or_never() {
                                Some(Some(Ok(delivery))) => {
                                    acks.track(delivery.delivery_tag);
                                    waiting.push(delivery);
                                }
                                Some(Some(Err(e))) => { ended = Some(Err(e)); break; }
                                Some(None) => { ended = Some(Ok(false)); break; }
                                None => break,
                            }
                        }
                        if let Some(ended) = ended {
                            break ended;
                        }
                    }
                    Some(Err(e)) => break Err(e),
                    None => break Ok(false),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = stop.wait_for(|s| *s) => break Ok(true),
            }
        };
        // Deliveries not started are left unacknowledged: the broker redelivers
        // them when this connection closes.
        drop(waiting);
        // Let in-flight events finish and settle (their acks need this channel).
        while in_flight.join_next().await.is_some() {}
        // Every outcome is reported; let the last acks reach the broker.
        drop(acks);
        let _ = settling.await;
        self.consuming.send_replace(false);
        let _ = connection.close(200, "billing stopping".into()).await;
        match result {
            Ok(true) => Ok(()),
            Ok(false) => Err(SessionError::Cancelled),
            Err(e) => Err(e.into()),
        }
    }

    /// Applies a batch in one transaction; if that fails, applies its events
    /// one at a time so each meets its own fate (retry, dead letter).
    async fn handle_batch(self: Arc<Self>, batch: Vec<Delivery>, acks: Acks) {
        let decoded: Vec<(Delivery, Result<Decoded, ProcessError>)> = batch
            .into_iter()
            .map(|delivery| {
                let event = process::decode(&delivery.data);
                (delivery, event)
            })
            .collect();
        let applicable = decoded.len() > 1 && decoded.iter().all(|(_, e)| e.is_ok());
        if applicable {
            metrics::histogram!("tollgate_billing_batch_size").record(decoded.len() as f64);
            // One transaction serves several webhooks' traces: each event gets its own
            // span under its publisher's (so its effects, outbox rows included, stay in
            // its trace), linked both ways with the batch's transaction span.
            let span =
                tracing::info_span!(parent: None, "billing_transaction", size = decoded.len());
            let spans: Vec<tracing::Span> = decoded
                .iter()
                .map(|(delivery, _)| {
                    let event_span = event_span(delivery);
                    event_span.follows_from(&span);
                    span.follows_from(&event_span);
                    event_span
                })
                .collect();
            let events: Vec<(&Decoded, u32, &tracing::Span)> = decoded
                .iter()
                .zip(&spans)
                .map(|((delivery, event), event_span)| {
                    let event = event.as_ref().expect("checked above");
                    (event, attempt_of(&delivery.properties), event_span)
                })
                .collect();
            let applied = process::apply_batch(&self.pool, &self.plans, &self.refetcher, &events)
                .instrument(span)
                .await;
            match applied {
                Ok(_) => {
                    acks.ack(decoded.iter().map(|(d, _)| d.delivery_tag).collect());
                    return;
                }
                Err(e) => {
                    metrics::counter!("tollgate_billing_batch_fallbacks_total").increment(1);
                    debug!(error = %e, size = decoded.len(), "batch failed; applying its events one by one");
                    // Each event's trace shows the failed try, then its own attempt.
                    for event_span in &spans {
                        event_span.record("otel.status_code", "error");
                    }
                }
            }
        }
        for (delivery, event) in decoded {
            self.handle(delivery, event, &acks).await;
        }
    }

    async fn handle(&self, delivery: Delivery, event: Result<Decoded, ProcessError>, acks: &Acks) {
        let attempt = attempt_of(&delivery.properties);
        let span = event_span(&delivery);
        async {
            let (event, result) = match event {
                Ok(event) => {
                    let transaction = tracing::info_span!("billing_transaction", size = 1);
                    let result =
                        process::apply(&self.pool, &self.plans, &self.refetcher, &event, attempt)
                            .instrument(transaction)
                            .await;
                    (Some(event), result.map(|_| ()))
                }
                Err(e) => (None, Err(e)),
            };
            let outcome = match result {
                Ok(()) => Settle::Ack,
                Err(e) if e.is_poison() || attempt >= self.max_attempts => {
                    self.dead_letter(&delivery, event.as_ref(), &e, attempt)
                        .await
                }
                Err(e) => self.retry(&delivery, event.as_ref(), &e, attempt).await,
            };
            match outcome {
                Settle::Ack => acks.ack(vec![delivery.delivery_tag]),
                Settle::Requeue => acks.requeue(delivery.delivery_tag),
            }
        }
        .instrument(span)
        .await;
    }

    async fn retry(
        &self,
        delivery: &Delivery,
        event: Option<&Decoded>,
        error: &ProcessError,
        attempt: u32,
    ) -> Settle {
        let queue = topology::billing_retry_queue(attempt);
        warn!(%error, retry_queue = queue, "event failed; retrying later");
        metrics::counter!("tollgate_billing_retries_total").increment(1);
        let properties = with_headers(&delivery.properties, |h| {
            h.insert(headers::ATTEMPT.into(), AMQPValue::LongUInt(attempt + 1));
        });
        if let Err(e) = self
            .publisher
            .publish("", queue, &delivery.data, properties)
            .await
        {
            error!(error = %e, "could not schedule the retry; requeueing");
            return Settle::Requeue;
        }
        if let Some(event) = event {
            // Best effort: the database is often what failed.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                crate::ledger::record_failure(
                    &self.pool,
                    &event.envelope,
                    &event.payload,
                    attempt,
                    &error.to_string(),
                    false,
                ),
            )
            .await;
        }
        Settle::Ack
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        event: Option<&Decoded>,
        error: &ProcessError,
        attempt: u32,
    ) -> Settle {
        error!(%error, "dead-lettering event");
        metrics::counter!("tollgate_billing_dead_letters_total").increment(1);
        let reason = truncate(&error.to_string(), 1000);
        let properties = with_headers(&delivery.properties, |h| {
            h.insert(
                headers::ERROR.into(),
                AMQPValue::LongString(LongString::from(reason.as_str())),
            );
            h.insert(headers::ATTEMPTS.into(), AMQPValue::LongUInt(attempt));
        });
        // The broker copy first: it is durable even while the database is down.
        if let Err(e) = self
            .publisher
            .publish(
                topology::DEAD_LETTER_EXCHANGE,
                delivery.routing_key.as_str(),
                &delivery.data,
                properties,
            )
            .await
        {
            error!(error = %e, "could not dead-letter; requeueing");
            return Settle::Requeue;
        }
        let recorded = crate::ledger::record_dead_letter(
            &self.pool,
            crate::ledger::DeadLetter {
                event: event.map(|e| (&e.envelope, &e.payload)),
                routing_key: delivery.routing_key.as_str(),
                body: &delivery.data,
                error: &reason,
                attempts: attempt,
            },
        );
        if let Err(e) = tokio::time::timeout(Duration::from_secs(5), recorded)
            .await
            .unwrap_or_else(|_| Err(sqlx::Error::PoolTimedOut))
        {
            warn!(error = %e, "dead letter is on the queue but not recorded in the database");
        }
        Settle::Ack
    }
}

/// The consumer span of one delivery, a child of the span that published it
/// (ingest's, carried in the `traceparent` header).
fn event_span(delivery: &Delivery) -> tracing::Span {
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_string())
        .unwrap_or_default();
    let span = tracing::info_span!(
        parent: None,
        "billing_event",
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "rabbitmq",
        messaging.destination.name = topology::BILLING_QUEUE,
        event_id = %message_id,
        event_type = %delivery.routing_key,
        attempt = attempt_of(&delivery.properties)
    );
    tollgate_broker::trace::continue_from(&span, &delivery.properties);
    span
}

/// The attempt this delivery is: 1, or what a retry set.
fn attempt_of(properties: &BasicProperties) -> u32 {
    properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(headers::ATTEMPT))
        .and_then(|v| match v {
            AMQPValue::LongUInt(n) => Some(*n),
            AMQPValue::LongInt(n) => u32::try_from(*n).ok(),
            AMQPValue::LongLongInt(n) => u32::try_from(*n).ok(),
            _ => None,
        })
        .unwrap_or(1)
        .max(1)
}

fn with_headers(
    properties: &BasicProperties,
    edit: impl FnOnce(&mut FieldTable),
) -> BasicProperties {
    let mut table = properties.headers().clone().unwrap_or_default();
    edit(&mut table);
    properties.clone().with_headers(table)
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
