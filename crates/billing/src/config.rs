use std::path::PathBuf;

use tollgate_runtime::config::{ConfigError, Env, redact_url};
use tollgate_stripe::StripeConfig;

/// Everything billing reads from its environment (see README, "Configuration").
#[derive(Clone)]
pub struct Config {
    /// `BILLING_ADDR`, default 127.0.0.1:8081: health, readiness and metrics.
    pub addr: std::net::SocketAddr,
    /// `DATABASE_URL` (required).
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`, default 10.
    pub database_max_connections: u32,
    /// `AMQP_URL` (required).
    pub amqp_url: String,
    /// `BILLING_PREFETCH`, default 128: unacknowledged events in flight per process.
    pub prefetch: u16,
    /// `BILLING_WORKERS`, default 4: transactions in flight at once per process.
    pub workers: u16,
    /// `BILLING_BATCH_MAX`, default 32: most events applied in one transaction
    /// (1 turns batching off).
    pub batch_max: u16,
    /// `BILLING_MAX_ATTEMPTS`, default 6: transient failures retried this many
    /// times in all (with growing delays) before the event is dead-lettered.
    pub max_attempts: u32,
    /// `BILLING_MIGRATE`, default true: apply database migrations at start.
    pub migrate: bool,
    /// `TOLLGATE_PLANS`, default `config/plans.toml`.
    pub plans_path: PathBuf,
    /// `BILLING_OUTBOX_RELAY`, default true: relay entitlement changes to RabbitMQ
    /// from this process (any number of processes may; one drains at a time).
    pub outbox_relay: bool,
    /// `BILLING_PAYLOAD_RETENTION_DAYS`, default 90; 0 keeps payloads forever.
    pub payload_retention_days: u32,
    /// `STRIPE_SECRET_KEY` (optional), `STRIPE_API_BASE`, `STRIPE_TIMEOUT_MS`,
    /// `STRIPE_REFETCH_RATE`: with a key, ambiguous same-second ties are settled by
    /// refetching the object; without one billing never calls Stripe.
    pub stripe: StripeConfig,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let prefetch: u16 = env.or("BILLING_PREFETCH", 128)?;
        let workers: u16 = env.or("BILLING_WORKERS", 4)?;
        let batch_max: u16 = env.or("BILLING_BATCH_MAX", 32)?;
        for (name, value) in [
            ("BILLING_PREFETCH", prefetch),
            ("BILLING_WORKERS", workers),
            ("BILLING_BATCH_MAX", batch_max),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(name, "must be at least 1"));
            }
        }
        let max_attempts: u32 = env.or("BILLING_MAX_ATTEMPTS", 6)?;
        if max_attempts == 0 {
            return Err(ConfigError::invalid(
                "BILLING_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        let database_url = env.required_string("DATABASE_URL")?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "DATABASE_URL",
                "must start with postgres://",
            ));
        }
        Ok(Self {
            addr: env.or(
                "BILLING_ADDR",
                std::net::SocketAddr::from(([127, 0, 0, 1], 8081)),
            )?,
            database_url,
            database_max_connections: env.or("DATABASE_MAX_CONNECTIONS", 10)?,
            amqp_url: env.required_string("AMQP_URL")?,
            prefetch,
            workers,
            batch_max,
            max_attempts,
            migrate: env.flag("BILLING_MIGRATE", true)?,
            plans_path: env.or(
                "TOLLGATE_PLANS",
                PathBuf::from(tollgate_plans::DEFAULT_PATH),
            )?,
            outbox_relay: env.flag("BILLING_OUTBOX_RELAY", true)?,
            payload_retention_days: env.or("BILLING_PAYLOAD_RETENTION_DAYS", 90)?,
            stripe: StripeConfig::from_env(env)?,
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("prefetch", &self.prefetch)
            .field("workers", &self.workers)
            .field("batch_max", &self.batch_max)
            .field("max_attempts", &self.max_attempts)
            .field("migrate", &self.migrate)
            .field("plans_path", &self.plans_path)
            .field("outbox_relay", &self.outbox_relay)
            .field("payload_retention_days", &self.payload_retention_days)
            .field("stripe", &self.stripe)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_the_database_and_the_broker_and_names_them() {
        let missing = Config::from_env(&Env::from_pairs([("AMQP_URL", "amqp://x")])).unwrap_err();
        assert_eq!(
            missing,
            ConfigError::Missing {
                name: "DATABASE_URL"
            }
        );
        let env = Env::from_pairs([
            ("AMQP_URL", "amqp://x"),
            ("DATABASE_URL", "postgres://u:secret@db/app"),
        ]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(config.prefetch, 128);
        assert_eq!((config.workers, config.batch_max), (4, 32));
        assert_eq!(config.max_attempts, 6);
        assert!(!format!("{config:?}").contains("secret"));
        assert!(
            config.stripe.secret_key.is_none(),
            "no Stripe calls by default"
        );
        let with_key = Env::from_pairs([
            ("AMQP_URL", "amqp://x"),
            ("DATABASE_URL", "postgres://db/app"),
            ("STRIPE_SECRET_KEY", "sk_test_hush"),
        ]);
        let config = Config::from_env(&with_key).unwrap();
        assert!(config.stripe.secret_key.is_some());
        assert!(!format!("{config:?}").contains("hush"));
        let bad = Env::from_pairs([
            ("AMQP_URL", "amqp://x"),
            ("DATABASE_URL", "postgres://db/app"),
            ("BILLING_PREFETCH", "0"),
        ]);
        assert!(matches!(
            Config::from_env(&bad),
            Err(ConfigError::Invalid {
                name: "BILLING_PREFETCH",
                ..
            })
        ));
    }
}
