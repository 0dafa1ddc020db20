//! The fulfillment service on a random port, answering from the REAL entitlements
//! service (its own PostgreSQL database with billing's schema, RabbitMQ vhost and
//! Redis prefix, seeded the way billing writes customers), and billing's REAL HTTP API
//! on the same database and vhost with the Stripe stand-in behind it (helpers::BillingApi).

mod helpers;

mod failures;
mod intents;
mod requests;
mod users;
