//! What integration tests share: a RabbitMQ vhost, a PostgreSQL database and a
//! Redis key prefix of their own, a TCP proxy that can cut a service off from its
//! broker, a real SMTP server to receive emails, real Stripe payloads signed the
//! way Stripe signs them, and a stand-in for the Stripe API.

pub mod amqp;
pub mod fixtures;
pub mod postgres;
pub mod proxy;
pub mod rabbitmq;
pub mod redis;
pub mod smtp;
pub mod stripe_stand_in;

pub use fixtures::{
    fresh_event, invoice_object, serve_test_jwks, signed_headers, stripe_fixture, stripe_object,
    subscription_object, unix_now,
};
pub use postgres::TestDatabase;
pub use proxy::TcpProxy;
pub use rabbitmq::TestVhost;
pub use redis::TestRedis;
pub use smtp::{SinkMessage, SinkOptions, SmtpFault, SmtpSink};
pub use stripe_stand_in::{RecordedRequest, Reply, StripeStandIn};

/// The workspace's root directory. Read at run time (cargo sets
/// `CARGO_MANIFEST_DIR` for every test it runs; every crate sits at
/// `crates/<name>`), because one target directory serves several checkouts and a
/// path compiled in would point at whichever checkout built this crate last.
pub fn workspace_root() -> std::path::PathBuf {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    std::path::Path::new(&crate_dir).join("../..")
}
