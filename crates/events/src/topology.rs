//! Names and arguments of the AMQP topology. Declared by `tollgate-broker`;
//! kept here so every service (and every test) agrees on them without I/O.
//!
//! ```text
//!  ingest ──publish(routing key = event type)──▶ [tollgate.stripe.events] (topic, durable)
//!                                                    │ binding "#"
//!                                                    ▼
//!                                         (tollgate.billing.events) quorum queue
//!                                                    │ rejected past the delivery limit,
//!                                                    │ or dead-lettered by billing with its error
//!                                                    ▼
//!                                  [tollgate.dead-letter] ─#─▶ (tollgate.dead-letter) quorum queue
//!
//!  transient failure: billing ─▶ (tollgate.billing.retry.<delay>) ─TTL─▶ default exchange ─▶ billing queue
//! ```

/// Topic exchange ingest publishes every Stripe event to; routing key = event type.
pub const EVENTS_EXCHANGE: &str = "tollgate.stripe.events";
/// Billing's work queue: every event type.
pub const BILLING_QUEUE: &str = "tollgate.billing.events";
pub const BILLING_BINDING: &str = "#";
/// Where poison messages go, with their error, to be inspected and replayed.
pub const DEAD_LETTER_EXCHANGE: &str = "tollgate.dead-letter";
pub const DEAD_LETTER_QUEUE: &str = "tollgate.dead-letter";
/// After this many deliveries a message is dead-lettered by the broker even if
/// its consumer never gets to say why (e.g. it crashes on it every time).
pub const BILLING_DELIVERY_LIMIT: i64 = 10;

/// Fanout exchange billing's outbox relay publishes entitlement changes to; each
/// entitlements replica binds a queue of its own.
pub const ENTITLEMENT_CHANGES_EXCHANGE: &str = "tollgate.entitlements.changes";

/// Delay queues for transient failures (e.g. the database is down): billing
/// publishes the message to the queue for its attempt; when the TTL expires the
/// broker dead-letters it back onto the billing queue through the default
/// exchange. Other events keep flowing meanwhile. (name, delay in ms)
pub const BILLING_RETRY_QUEUES: &[(&str, u32)] = &[
    ("tollgate.billing.retry.1s", 1_000),
    ("tollgate.billing.retry.5s", 5_000),
    ("tollgate.billing.retry.30s", 30_000),
    ("tollgate.billing.retry.2m", 120_000),
    ("tollgate.billing.retry.10m", 600_000),
];

/// The delay queue for a message that failed on `attempt` (1-based); the last
/// delay repeats.
pub fn billing_retry_queue(attempt: u32) -> &'static str {
    let index = (attempt.max(1) as usize - 1).min(BILLING_RETRY_QUEUES.len() - 1);
    BILLING_RETRY_QUEUES[index].0
}

/// Message header names set by ingest.
pub mod headers {
    pub const API_VERSION: &str = "api_version";
    pub const LIVEMODE: &str = "livemode";
    pub const TRACEPARENT: &str = "traceparent";
    pub const ACCOUNT: &str = "account";
    pub const CREATED: &str = "created";
    /// Set by billing on retried messages: the attempt this delivery is (1-based).
    pub const ATTEMPT: &str = "x-tollgate-attempt";
    /// Set by billing on dead-lettered messages.
    pub const ERROR: &str = "x-tollgate-error";
    pub const ATTEMPTS: &str = "x-tollgate-attempts";
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
/// AMQP delivery mode for persistent messages.
pub const PERSISTENT: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_then_repeat() {
        assert_eq!(billing_retry_queue(0), "tollgate.billing.retry.1s");
        assert_eq!(billing_retry_queue(1), "tollgate.billing.retry.1s");
        assert_eq!(billing_retry_queue(2), "tollgate.billing.retry.5s");
        assert_eq!(billing_retry_queue(5), "tollgate.billing.retry.10m");
        assert_eq!(billing_retry_queue(50), "tollgate.billing.retry.10m");
    }
}
