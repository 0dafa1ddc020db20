//! Outgoing calls to the Stripe API (incoming webhooks never come through here).
//!
//! - [`StripeConfig`]: `STRIPE_SECRET_KEY` (optional: without it no call is ever made),
//!   `STRIPE_API_BASE`, `STRIPE_TIMEOUT_MS`, `STRIPE_REFETCH_RATE`.
//! - [`StripeClient`]: async-stripe's client, returning objects as Stripe's raw JSON so
//!   callers decode them exactly as they decode webhook snapshots.
//! - [`Refetcher`]: retrieving an object on demand, single-flight per object and bounded by
//!   a process-wide token bucket; every failure is an explicit [`Fallback`].
//! - Typed operations on [`StripeClient`] (`operations`): customers, Checkout and Customer
//!   Portal sessions, subscription changes, paged lists with [`Backoff`]; every POST with an
//!   [`IdempotencyKey`].

mod client;
mod config;
pub mod operations;
mod refetch;

pub use client::{ObjectKind, Rejection, StripeApiError, StripeClient, api_version};
pub use config::{DEFAULT_API_BASE, DEFAULT_REFETCH_RATE, SecretKey, StripeConfig};
pub use operations::{Backoff, IdempotencyKey};
pub use refetch::{Fallback, Fetched, Outcome, Refetcher};
