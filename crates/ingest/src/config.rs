use std::net::SocketAddr;
use std::time::Duration;

use tollgate_events::WebhookSecrets;
use tollgate_events::signature::DEFAULT_TOLERANCE_SECS;
use tollgate_runtime::config::{ConfigError, Env, redact_url};

/// Largest webhook body accepted; Stripe's events are far below this.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything ingest reads from its environment (see README, "Configuration").
#[derive(Clone)]
pub struct Config {
    /// `INGEST_ADDR`, default 127.0.0.1:8080. Port 0 picks a free port (tests).
    pub addr: SocketAddr,
    /// `AMQP_URL` (required).
    pub amqp_url: String,
    /// `STRIPE_WEBHOOK_SECRET` (required): one secret, or several comma-separated while rotating.
    pub webhook_secrets: WebhookSecrets,
    /// `STRIPE_WEBHOOK_TOLERANCE_SECS`, default 300.
    pub tolerance_secs: u64,
    /// `STRIPE_LIVEMODE`, default false: events of the other mode are refused.
    pub livemode: bool,
    /// `AMQP_CONFIRM_TIMEOUT_MS`, default 5000: longer than this without a broker confirm answers 503.
    pub confirm_timeout: Duration,
    /// `AMQP_PUBLISH_CHANNELS`, default 4.
    pub publish_channels: usize,
    /// `INGEST_WORKERS`, default: one per CPU core.
    pub workers: Option<usize>,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 25: how long in-flight requests get on SIGTERM.
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let webhook_secrets = WebhookSecrets::parse(&env.required_string("STRIPE_WEBHOOK_SECRET")?)
            .map_err(|e| ConfigError::invalid("STRIPE_WEBHOOK_SECRET", e))?;
        let publish_channels: usize = env.or("AMQP_PUBLISH_CHANNELS", 4)?;
        if publish_channels == 0 {
            return Err(ConfigError::invalid(
                "AMQP_PUBLISH_CHANNELS",
                "must be at least 1",
            ));
        }
        let confirm_timeout_ms: u64 = env.or("AMQP_CONFIRM_TIMEOUT_MS", 5000)?;
        if confirm_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "AMQP_CONFIRM_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        let amqp_url = env.required_string("AMQP_URL")?;
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(ConfigError::invalid(
                "AMQP_URL",
                "must start with amqp:// or amqps://",
            ));
        }
        Ok(Self {
            addr: env.or("INGEST_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            amqp_url,
            webhook_secrets,
            tolerance_secs: env.or("STRIPE_WEBHOOK_TOLERANCE_SECS", DEFAULT_TOLERANCE_SECS)?,
            livemode: env.flag("STRIPE_LIVEMODE", false)?,
            confirm_timeout: Duration::from_millis(confirm_timeout_ms),
            publish_channels,
            workers: env.optional("INGEST_WORKERS")?,
            shutdown_timeout: Duration::from_secs(env.or("SHUTDOWN_TIMEOUT_SECS", 25)?),
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field(
                "webhook_secrets",
                &format_args!("<{} redacted>", self.webhook_secrets.len()),
            )
            .field("tolerance_secs", &self.tolerance_secs)
            .field("livemode", &self.livemode)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("publish_channels", &self.publish_channels)
            .field("workers", &self.workers)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&str, &str)]) -> Env {
        let mut pairs = vec![
            ("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_one,whsec_two"),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert_eq!(config.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.tolerance_secs, 300);
        assert!(!config.livemode);
        assert_eq!(config.webhook_secrets.len(), 2);
    }

    #[test]
    fn errors_name_the_variable() {
        let missing = Config::from_env(&Env::from_pairs([("AMQP_URL", "amqp://x")])).unwrap_err();
        assert_eq!(
            missing,
            ConfigError::Missing {
                name: "STRIPE_WEBHOOK_SECRET"
            }
        );
        let missing =
            Config::from_env(&Env::from_pairs([("STRIPE_WEBHOOK_SECRET", "whsec_x")])).unwrap_err();
        assert_eq!(missing, ConfigError::Missing { name: "AMQP_URL" });
        for (name, value) in [
            ("INGEST_ADDR", "localhost"),
            ("STRIPE_LIVEMODE", "perhaps"),
            ("STRIPE_WEBHOOK_TOLERANCE_SECS", "-1"),
            ("AMQP_URL", "http://rabbit"),
            ("AMQP_PUBLISH_CHANNELS", "0"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_a,"),
        ] {
            match Config::from_env(&env(&[(name, value)])) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}={value}: expected invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_output_hides_secrets_and_credentials() {
        let printed = format!("{:?}", Config::from_env(&env(&[])).unwrap());
        assert!(!printed.contains("whsec_one"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
    }
}
