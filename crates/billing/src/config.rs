use std::path::PathBuf;
use std::time::Duration;

use lettre::message::Mailbox;
use tollgate_runtime::config::{ConfigError, Env, redact_url};
use tollgate_stripe::StripeConfig;

use crate::account::AccountConfig;
use crate::api::ApiConfig;
use crate::emails::smtp::SmtpSettings;

/// `EMAIL_FROM` when unset.
pub const DEFAULT_EMAIL_FROM: &str = "Tollgate <billing@localhost>";

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
    /// `BILLING_GAUGES_INTERVAL_SECS`, default 15: how often the gauges read from
    /// PostgreSQL and RabbitMQ (active subscriptions by tier, queue depth) are refreshed.
    pub gauges_interval: std::time::Duration,
    /// `STRIPE_SECRET_KEY` (optional), `STRIPE_API_BASE`, `STRIPE_TIMEOUT_MS`,
    /// `STRIPE_REFETCH_RATE`: with a key, ambiguous same-second ties are settled by
    /// refetching the object; without one billing never calls Stripe.
    pub stripe: StripeConfig,
    pub email: EmailConfig,
    /// The HTTP API for frontends (`BILLING_API_*`; crate::api::ApiConfig).
    pub api: ApiConfig,
    /// Checkout and portal settings (`CHECKOUT_SUCCESS_URL`, `CHECKOUT_CANCEL_URL`,
    /// `PORTAL_RETURN_URL`, `CHECKOUT_RATE_*`, `CHECKOUT_IDEMPOTENCY_WINDOW_SECS`): `None`
    /// when none of the URLs is set (the API then answers checkout and portal requests
    /// with 503); all three URLs are required once one is.
    pub account: Option<AccountConfig>,
}

/// Payment emails (docs/billing-state.md, "Emails").
#[derive(Clone, Debug)]
pub struct EmailConfig {
    /// `SMTP_URL`: `smtp://[user:pass@]host[:port][?tls=required|opportunistic]` or
    /// `smtps://...`. Unset: emails are queued but not sent. `SMTP_CA_FILE`: PEM
    /// root certificates trusted besides the public ones (a relay's private CA).
    pub smtp: Option<SmtpSettings>,
    /// `EMAIL_FROM`, default `Tollgate <billing@localhost>`.
    pub from: Mailbox,
    /// `EMAIL_MAX_ATTEMPTS`, default 12: SMTP attempts per email before it is `failed`.
    pub max_attempts: u32,
    /// `EMAIL_RETRY_BASE_MS`, default 30000: the wait before the second attempt,
    /// doubling up to an hour (12 attempts span about five hours).
    pub retry_base: Duration,
}

impl EmailConfig {
    fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let extra_roots = env
            .raw("SMTP_CA_FILE")
            .map(|path| {
                std::fs::read(path.trim())
                    .map_err(|e| ConfigError::invalid("SMTP_CA_FILE", format!("{path}: {e}")))
            })
            .transpose()?;
        let smtp = env
            .raw("SMTP_URL")
            .map(|url| SmtpSettings::parse(url.trim(), extra_roots.as_deref()))
            .transpose()
            .map_err(|e| ConfigError::invalid("SMTP_URL", e))?;
        let from: Mailbox = env
            .raw("EMAIL_FROM")
            .as_deref()
            .unwrap_or(DEFAULT_EMAIL_FROM)
            .trim()
            .parse()
            .map_err(|e| ConfigError::invalid("EMAIL_FROM", format!("not an address ({e})")))?;
        let max_attempts: u32 = env.or("EMAIL_MAX_ATTEMPTS", 12)?;
        if max_attempts == 0 {
            return Err(ConfigError::invalid(
                "EMAIL_MAX_ATTEMPTS",
                "must be at least 1",
            ));
        }
        let retry_base_ms: u64 = env.or("EMAIL_RETRY_BASE_MS", 30_000)?;
        Ok(Self {
            smtp,
            from,
            max_attempts,
            retry_base: Duration::from_millis(retry_base_ms.max(1)),
        })
    }
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
        let gauges_interval_secs: u64 = env.or("BILLING_GAUGES_INTERVAL_SECS", 15)?;
        if gauges_interval_secs == 0 {
            return Err(ConfigError::invalid(
                "BILLING_GAUGES_INTERVAL_SECS",
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
            gauges_interval: std::time::Duration::from_secs(gauges_interval_secs),
            stripe: StripeConfig::from_env(env)?,
            email: EmailConfig::from_env(env)?,
            api: ApiConfig::from_env(env)?,
            account: if [
                "CHECKOUT_SUCCESS_URL",
                "CHECKOUT_CANCEL_URL",
                "PORTAL_RETURN_URL",
            ]
            .iter()
            .any(|name| env.raw(name).is_some())
            {
                Some(AccountConfig::from_env(env)?)
            } else {
                None
            },
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
            .field("gauges_interval", &self.gauges_interval)
            .field("stripe", &self.stripe)
            .field("email", &self.email)
            .field("api", &self.api)
            .field("account", &self.account)
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

    #[test]
    fn emails_are_off_without_smtp_and_the_smtp_password_never_prints() {
        let base = [
            ("AMQP_URL", "amqp://x"),
            ("DATABASE_URL", "postgres://db/app"),
        ];
        let config = Config::from_env(&Env::from_pairs(base)).unwrap();
        assert!(config.email.smtp.is_none());
        assert_eq!(config.email.from.to_string(), DEFAULT_EMAIL_FROM);
        assert_eq!(config.email.max_attempts, 12);

        let mut pairs = base.to_vec();
        pairs.push(("SMTP_URL", "smtps://billing:hunter2@smtp.example.com"));
        pairs.push(("EMAIL_FROM", "Acme Billing <billing@acme.test>"));
        let config = Config::from_env(&Env::from_pairs(pairs.clone())).unwrap();
        assert_eq!(config.email.smtp.as_ref().unwrap().port, 465);
        assert_eq!(config.email.from.email.domain(), "acme.test");
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("hunter2") && printed.contains("smtp.example.com"),
            "{printed}"
        );

        pairs[2] = ("SMTP_URL", "smtp://billing:hunter2@smtp.example.com");
        let error = Config::from_env(&Env::from_pairs(pairs.clone())).unwrap_err();
        assert!(matches!(
            error,
            ConfigError::Invalid {
                name: "SMTP_URL",
                ..
            }
        ));
        assert!(!error.to_string().contains("hunter2"), "{error}");
        pairs[2] = ("SMTP_URL", "smtps://smtp.example.com");
        pairs.push(("SMTP_CA_FILE", "/nonexistent/ca.pem"));
        assert!(matches!(
            Config::from_env(&Env::from_pairs(pairs.clone())),
            Err(ConfigError::Invalid {
                name: "SMTP_CA_FILE",
                ..
            })
        ));
        pairs.pop();
        pairs[2] = ("SMTP_URL", "smtp://127.0.0.1:1025");
        pairs[3] = ("EMAIL_FROM", "not an address");
        assert!(matches!(
            Config::from_env(&Env::from_pairs(pairs)),
            Err(ConfigError::Invalid {
                name: "EMAIL_FROM",
                ..
            })
        ));
    }
}
