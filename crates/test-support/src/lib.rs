//! What integration tests share: a RabbitMQ vhost, a PostgreSQL database and a
//! Redis key prefix of their own, a TCP proxy
//! that can cut a service off from its broker, and real Stripe payloads signed
//! the way Stripe signs them.

pub mod amqp;
pub mod fixtures;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq;
pub mod redis;

pub use fixtures::{fresh_event, signed_headers, stripe_fixture, unix_now};
pub use postgres::TestDatabase;
pub use proxy::TcpProxy;
pub use rabbitmq::TestVhost;
pub use redis::TestRedis;
