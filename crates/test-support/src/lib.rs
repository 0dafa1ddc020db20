//! What integration tests share: a RabbitMQ vhost and a PostgreSQL database of
//! their own, a TCP proxy
//! that can cut a service off from its broker, a real SMTP server to receive
//! emails, and real Stripe payloads signed the way Stripe signs them.

pub mod amqp;
pub mod fixtures;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq;
pub mod smtp;

pub use fixtures::{fresh_event, signed_headers, stripe_fixture, unix_now};
pub use postgres::TestDatabase;
pub use proxy::TcpProxy;
pub use rabbitmq::TestVhost;
pub use smtp::{SinkMessage, SinkOptions, SmtpFault, SmtpSink};
