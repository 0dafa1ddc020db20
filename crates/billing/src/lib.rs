//! Tollgate billing: consumes the Stripe events ingest published and applies
//! each exactly once to billing state in PostgreSQL.
//!
//! Built so far: the idempotency ledger (every event stored once, in the same
//! transaction as its effects), retries with backoff through delay queues for
//! transient failures, dead-lettering with the error for poison messages, and
//! the checkout and subscription handlers with the ordering gate and derived
//! access, the Stripe refetch that settles ambiguous same-second ties
//! (docs/billing-state.md), the entitlement-change outbox, payment emails sent
//! over SMTP from an outbox of their own; the customer-facing Stripe operations
//! (checkout, portal, plan changes: `account`) and the repair of state from
//! Stripe's API (`reconcile`); the HTTP API for frontends and services (`api`), with
//! operator actions (`admin`, `dead_letters`) shared with the `tollgate` command line.

pub mod account;
pub mod acks;
pub mod admin;
pub mod api;
pub mod business;
pub mod checkout_limit;
pub mod config;
pub mod consumer;
pub mod customers;
pub mod db;
pub mod dead_letters;
pub mod emails;
pub mod gauges;
pub mod handlers;
pub mod http;
pub mod ledger;
pub mod outbox;
pub mod process;
pub mod reconcile;
pub mod refetch;
pub mod retention;
pub mod startup;
pub mod stripe;
pub mod wakeup;

pub use config::Config;
pub use startup::Application;
