//! Tollgate ingest: receives Stripe webhooks, verifies their signature, and
//! answers 2xx only once the event is confirmed on RabbitMQ.

pub mod config;
pub mod error;
pub mod routes;
pub mod startup;

pub use config::Config;
pub use startup::Application;
