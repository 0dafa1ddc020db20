//! Billing's consumer against a real PostgreSQL (a database per test) and a real
//! RabbitMQ (a vhost per test).

mod helpers;

mod convergence;
mod crash;
mod credits;
mod delivery;
mod disputes;
mod emails;
mod failures;
mod invoices;
mod outbox;
mod refetch;
mod retention;
mod subscriptions;
