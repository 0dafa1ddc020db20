//! Stripe API settings, read from the environment like every other setting.

use std::time::Duration;

use tollgate_runtime::config::{ConfigError, Env};

/// Stripe's own API host (async-stripe's default too; kept here so it can be printed).
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";

/// Refetches per second when `STRIPE_REFETCH_RATE` is unset: far below Stripe's read limit
/// (100/s live, 25/s test), leaving the account's budget to checkout, portal and reconcile.
pub const DEFAULT_REFETCH_RATE: u32 = 5;

/// A Stripe secret (`sk_...`) or restricted (`rk_...`) key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(key: impl Into<String>) -> Result<Self, ConfigError> {
        let key = key.into();
        let key = key.trim();
        if !(key.starts_with("sk_") || key.starts_with("rk_")) {
            // The value itself is not repeated: it may be some other secret pasted by mistake.
            return Err(ConfigError::invalid(
                "STRIPE_SECRET_KEY",
                "must be a secret (sk_...) or restricted (rk_...) key",
            ));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                "STRIPE_SECRET_KEY",
                "must contain visible ASCII characters only",
            ));
        }
        Ok(Self(key.to_string()))
    }

    /// The key itself, for the `Authorization` header and nothing else.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is a live-mode key (`sk_live_` / `rk_live_`).
    pub fn is_live(&self) -> bool {
        self.0[3..].starts_with("live_")
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = if self.is_live() { "live" } else { "test" };
        write!(f, "<redacted {mode} key>")
    }
}

/// Everything the Stripe client reads from its environment (see README, "Configuration").
#[derive(Clone)]
pub struct StripeConfig {
    /// `STRIPE_SECRET_KEY`, optional: without it no Stripe API call is ever made.
    pub secret_key: Option<SecretKey>,
    /// `STRIPE_API_BASE`, default Stripe's; ends with `/` (the client appends `v1/...`).
    pub api_base: String,
    /// `STRIPE_TIMEOUT_MS`, default 3000: the bound on one request, connect to last byte.
    pub timeout: Duration,
    /// `STRIPE_REFETCH_RATE`, default 5: refetches per second across the process (a token
    /// bucket holding one second's worth). 0 turns refetching off while keeping the client.
    pub refetch_rate: u32,
}

impl std::fmt::Debug for StripeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The word "secret" stays out too: services assert their printed config has none.
        f.debug_struct("StripeConfig")
            .field("api_key", &self.secret_key)
            .field("api_base", &self.api_base)
            .field("timeout", &self.timeout)
            .field("refetch_rate", &self.refetch_rate)
            .finish()
    }
}

impl StripeConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let secret_key = env
            .raw("STRIPE_SECRET_KEY")
            .map(SecretKey::new)
            .transpose()?;
        let mut api_base = env.or("STRIPE_API_BASE", DEFAULT_API_BASE.to_string())?;
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            return Err(ConfigError::invalid(
                "STRIPE_API_BASE",
                "must start with https:// (or http:// for a local stand-in)",
            ));
        }
        if !api_base.ends_with('/') {
            api_base.push('/');
        }
        let timeout_ms: u64 = env.or("STRIPE_TIMEOUT_MS", 3000)?;
        if timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "STRIPE_TIMEOUT_MS",
                "must be at least 1",
            ));
        }
        Ok(Self {
            secret_key,
            api_base,
            timeout: Duration::from_millis(timeout_ms),
            refetch_rate: env.or("STRIPE_REFETCH_RATE", DEFAULT_REFETCH_RATE)?,
        })
    }

    /// No key, no calls: what billing runs with unless told otherwise.
    pub fn disabled() -> Self {
        Self {
            secret_key: None,
            api_base: DEFAULT_API_BASE.to_string(),
            timeout: Duration::from_secs(3),
            refetch_rate: DEFAULT_REFETCH_RATE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_is_optional_and_the_key_never_prints() {
        let none = StripeConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert!(none.secret_key.is_none());
        assert_eq!(none.api_base, DEFAULT_API_BASE);
        assert_eq!(none.timeout, Duration::from_secs(3));
        assert_eq!(none.refetch_rate, DEFAULT_REFETCH_RATE);

        let env = Env::from_pairs([
            ("STRIPE_SECRET_KEY", "sk_live_verysecret"),
            ("STRIPE_API_BASE", "http://127.0.0.1:9999"),
            ("STRIPE_TIMEOUT_MS", "250"),
            ("STRIPE_REFETCH_RATE", "0"),
        ]);
        let config = StripeConfig::from_env(&env).unwrap();
        assert_eq!(config.api_base, "http://127.0.0.1:9999/");
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.refetch_rate, 0);
        let printed = format!("{config:?}");
        assert!(!printed.to_lowercase().contains("secret"), "{printed}");
        assert!(printed.contains("redacted live key"), "{printed}");
    }

    #[test]
    fn refuses_what_is_not_a_secret_key_without_echoing_it() {
        for bad in ["whsec_abc", "pk_test_abc", "sk_test_a b"] {
            let err =
                StripeConfig::from_env(&Env::from_pairs([("STRIPE_SECRET_KEY", bad)])).unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Invalid {
                        name: "STRIPE_SECRET_KEY",
                        ..
                    }
                ),
                "{bad}"
            );
            assert!(!err.to_string().contains(bad), "{err}");
        }
        let err = StripeConfig::from_env(&Env::from_pairs([("STRIPE_API_BASE", "api.stripe.com")]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                name: "STRIPE_API_BASE",
                ..
            }
        ));
    }
}
