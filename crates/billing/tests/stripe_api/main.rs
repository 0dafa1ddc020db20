//! Billing's Stripe API side against the Stripe stand-in and a real PostgreSQL database:
//! checkouts, the portal and subscription changes (`account`), `reconcile` and `backfill`.

mod backfill;
mod checkout;
mod helpers;
mod reconcile;
mod subscriptions;
