//! Billing's HTTP API, spawned for real (the billing binary's `Application` on port 0)
//! against a fresh database, its own RabbitMQ vhost and the Stripe stand-in, driven
//! with reqwest. State is made by applying real Stripe events through billing's own
//! event path.

mod admin;
mod helpers;
mod openapi;
mod page;
mod reads;
mod security;
mod sessions;
