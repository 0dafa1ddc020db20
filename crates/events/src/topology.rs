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

/// Message header names set by ingest.
pub mod headers {
    pub const API_VERSION: &str = "api_version";
    pub const LIVEMODE: &str = "livemode";
    pub const TRACEPARENT: &str = "traceparent";
    pub const ACCOUNT: &str = "account";
    pub const CREATED: &str = "created";
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
/// AMQP delivery mode for persistent messages.
pub const PERSISTENT: u8 = 2;
