//! The fulfillment service on a random port, answering from the REAL entitlements
//! service (its own PostgreSQL database with billing's schema, RabbitMQ vhost and
//! Redis prefix, seeded the way billing writes customers), with billing's HTTP API
//! contract served by a recording stand-in (see helpers::BillingApi).

mod helpers;

mod failures;
mod intents;
mod requests;
mod users;
