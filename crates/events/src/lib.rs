//! The contract every Tollgate service shares about Stripe events, with no I/O:
//! how a `Stripe-Signature` is checked, what an event envelope is, and the names
//! of the AMQP exchanges and queues the events travel through.

pub mod envelope;
pub mod signature;
pub mod topology;

pub use envelope::{EnvelopeError, EventEnvelope};
pub use signature::{SignatureError, SignatureHeader, SigningSecret, WebhookSecrets};
