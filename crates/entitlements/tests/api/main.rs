//! The entitlements service against a real PostgreSQL (a database per test), a
//! real RabbitMQ (a vhost per test) and a real Redis (a key prefix per test),
//! called through a real tonic client on a random port.

mod helpers;

mod access;
mod credits;
mod freshness;
mod limits;
mod security;
mod watch;
