//! Ingest end to end: the real HTTP server, a real RabbitMQ (a vhost per test).

mod helpers;

mod binary;
mod broker_outage;
mod rejects;
mod trace_export;
mod webhook;
