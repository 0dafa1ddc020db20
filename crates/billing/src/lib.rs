//! Tollgate billing: consumes the Stripe events ingest published and applies
//! each exactly once to billing state in PostgreSQL.
//!
//! Built so far: the idempotency ledger (every event stored once, in the same
//! transaction as its effects), retries with backoff through delay queues for
//! transient failures, and dead-lettering with the error for poison messages.
//! Event handlers (subscriptions, invoices, credits, ...) build on this.

pub mod config;
pub mod consumer;
pub mod db;
pub mod ledger;
pub mod process;
pub mod startup;

pub use config::Config;
pub use startup::Application;
