use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_runtime::config::{ConfigError, Env, redact_url};

use crate::intents::{Intent, IntentNames};

/// Largest webhook body accepted; Dialogflow's requests are a few KiB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Dialogflow gives up on a webhook after 5 s: every upstream call must end well before.
const MAX_UPSTREAM_TIMEOUT_MS: u64 = 4500;

/// Everything fulfillment reads from its environment (see README, "Configuration").
#[derive(Clone)]
pub struct Config {
    /// `FULFILLMENT_ADDR`, default 127.0.0.1:8083. Port 0 picks a free port (tests).
    pub addr: SocketAddr,
    /// `FULFILLMENT_WORKERS`, default: one per CPU core.
    pub workers: Option<usize>,
    /// `FULFILLMENT_BASIC_AUTH`: `user:password` Dialogflow sends as HTTP basic auth.
    pub basic_auth: Option<(String, String)>,
    /// `FULFILLMENT_HEADER_NAME` + `FULFILLMENT_HEADER_TOKEN`: a header Dialogflow
    /// sends with a secret value. At least one of the two methods is required.
    pub header_token: Option<(String, String)>,
    /// `FULFILLMENT_ENTITLEMENTS_URL`, default `http://127.0.0.1:50051`.
    pub entitlements_url: String,
    /// `FULFILLMENT_ENTITLEMENTS_TOKEN` (required): a service token entitlements accepts.
    pub entitlements_token: String,
    /// `FULFILLMENT_BILLING_API_URL`: billing's HTTP API (checkout and portal sessions).
    /// Unset: upgrade and manage answers point at `FULFILLMENT_BILLING_PAGE_URL`.
    pub billing_api_url: Option<String>,
    /// `FULFILLMENT_BILLING_API_TOKEN`: required with the API URL.
    pub billing_api_token: Option<String>,
    /// `FULFILLMENT_BILLING_PAGE_URL`: where people manage billing themselves; the
    /// fallback link when billing's API cannot answer.
    pub billing_page_url: Option<String>,
    /// `FULFILLMENT_UPSTREAM_TIMEOUT_MS`, default 2000, at most 4500: bound on every
    /// call to entitlements or billing.
    pub upstream_timeout: Duration,
    /// `FULFILLMENT_UPGRADE_PLAN`: the plan key an upgrade checks out when the user
    /// names none; default the first plan for sale in the plans file.
    pub upgrade_plan: Option<String>,
    /// `TOLLGATE_PLANS`, default `config/plans.toml`: feature descriptions and plan keys.
    pub plans_path: PathBuf,
    /// `FULFILLMENT_INTENT_STATUS`, `_FEATURES`, `_CREDITS`, `_UPGRADE`, `_MANAGE`:
    /// comma-separated ES actions / intent display names / CX tags for each answer.
    pub intents: IntentNames,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 25.
    pub shutdown_timeout: Duration,
}

fn secret(env: &Env, name: &'static str) -> Result<Option<String>, ConfigError> {
    match env.raw(name) {
        Some(value) if value.len() < 16 => {
            Err(ConfigError::invalid(name, "must be at least 16 characters"))
        }
        other => Ok(other),
    }
}

fn http_url(env: &Env, name: &'static str) -> Result<Option<String>, ConfigError> {
    match env.raw(name) {
        Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => Err(
            ConfigError::invalid(name, "must start with http:// or https://"),
        ),
        Some(url) => Ok(Some(url.trim_end_matches('/').to_string())),
        None => Ok(None),
    }
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let basic_auth = match env.raw("FULFILLMENT_BASIC_AUTH") {
            None => None,
            Some(pair) => match pair.split_once(':') {
                Some((user, password)) if !user.is_empty() && password.len() >= 12 => {
                    Some((user.to_string(), password.to_string()))
                }
                _ => {
                    return Err(ConfigError::invalid(
                        "FULFILLMENT_BASIC_AUTH",
                        "must be user:password with a password of at least 12 characters",
                    ));
                }
            },
        };
        let header_token = match (
            env.raw("FULFILLMENT_HEADER_NAME"),
            secret(env, "FULFILLMENT_HEADER_TOKEN")?,
        ) {
            (None, None) => None,
            (Some(name), Some(token)) => {
                actix_web::http::header::HeaderName::try_from(name.as_str())
                    .map_err(|e| ConfigError::invalid("FULFILLMENT_HEADER_NAME", e))?;
                Some((name.to_ascii_lowercase(), token))
            }
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    name: "FULFILLMENT_HEADER_TOKEN",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    name: "FULFILLMENT_HEADER_NAME",
                });
            }
        };
        if basic_auth.is_none() && header_token.is_none() {
            return Err(ConfigError::Missing {
                name: "FULFILLMENT_BASIC_AUTH",
            });
        }
        let entitlements_url = http_url(env, "FULFILLMENT_ENTITLEMENTS_URL")?
            .unwrap_or_else(|| "http://127.0.0.1:50051".into());
        let entitlements_token =
            secret(env, "FULFILLMENT_ENTITLEMENTS_TOKEN")?.ok_or(ConfigError::Missing {
                name: "FULFILLMENT_ENTITLEMENTS_TOKEN",
            })?;
        let billing_api_url = http_url(env, "FULFILLMENT_BILLING_API_URL")?;
        let billing_api_token = secret(env, "FULFILLMENT_BILLING_API_TOKEN")?;
        if billing_api_url.is_some() && billing_api_token.is_none() {
            return Err(ConfigError::Missing {
                name: "FULFILLMENT_BILLING_API_TOKEN",
            });
        }
        let timeout_ms: u64 = env.or("FULFILLMENT_UPSTREAM_TIMEOUT_MS", 2000)?;
        if timeout_ms == 0 || timeout_ms > MAX_UPSTREAM_TIMEOUT_MS {
            return Err(ConfigError::invalid(
                "FULFILLMENT_UPSTREAM_TIMEOUT_MS",
                format!("must be between 1 and {MAX_UPSTREAM_TIMEOUT_MS} (Dialogflow waits 5 s)"),
            ));
        }
        let mut intents = IntentNames::default();
        for (name, intent) in [
            ("FULFILLMENT_INTENT_STATUS", Intent::Status),
            ("FULFILLMENT_INTENT_FEATURES", Intent::Features),
            ("FULFILLMENT_INTENT_CREDITS", Intent::Credits),
            ("FULFILLMENT_INTENT_UPGRADE", Intent::Upgrade),
            ("FULFILLMENT_INTENT_MANAGE", Intent::Manage),
        ] {
            if env.raw(name).is_some() {
                intents.set(intent, env.list(name));
            }
        }
        if let Some(clash) = intents.clash() {
            return Err(ConfigError::invalid(
                "FULFILLMENT_INTENT_*",
                format!("`{clash}` is configured for two answers"),
            ));
        }
        Ok(Self {
            addr: env.or("FULFILLMENT_ADDR", SocketAddr::from(([127, 0, 0, 1], 8083)))?,
            workers: env.optional("FULFILLMENT_WORKERS")?,
            basic_auth,
            header_token,
            entitlements_url,
            entitlements_token,
            billing_api_url,
            billing_api_token,
            billing_page_url: http_url(env, "FULFILLMENT_BILLING_PAGE_URL")?,
            upstream_timeout: Duration::from_millis(timeout_ms),
            upgrade_plan: env.raw("FULFILLMENT_UPGRADE_PLAN"),
            plans_path: env.or("TOLLGATE_PLANS", PathBuf::from("config/plans.toml"))?,
            intents,
            shutdown_timeout: Duration::from_secs(env.or("SHUTDOWN_TIMEOUT_SECS", 25)?),
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<unset>" };
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("workers", &self.workers)
            .field(
                "basic_auth",
                &self
                    .basic_auth
                    .as_ref()
                    .map(|(user, _)| format!("{user}:<redacted>")),
            )
            .field(
                "header_token",
                &self
                    .header_token
                    .as_ref()
                    .map(|(name, _)| format!("{name}: <redacted>")),
            )
            .field("entitlements_url", &redact_url(&self.entitlements_url))
            .field("entitlements_token", &redacted(true))
            .field(
                "billing_api_url",
                &self.billing_api_url.as_deref().map(redact_url),
            )
            .field(
                "billing_api_token",
                &redacted(self.billing_api_token.is_some()),
            )
            .field("billing_page_url", &self.billing_page_url)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("upgrade_plan", &self.upgrade_plan)
            .field("plans_path", &self.plans_path)
            .field("intents", &self.intents)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&str, &str)]) -> Env {
        let mut pairs = vec![
            ("FULFILLMENT_BASIC_AUTH", "dialogflow:correct-horse-battery"),
            ("FULFILLMENT_ENTITLEMENTS_TOKEN", "service-token-0123456789"),
        ];
        for (name, value) in extra {
            pairs.retain(|(n, _)| n != name);
            pairs.push((name, value));
        }
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert_eq!(config.addr, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(config.entitlements_url, "http://127.0.0.1:50051");
        assert_eq!(config.upstream_timeout, Duration::from_millis(2000));
        assert!(config.billing_api_url.is_none() && config.header_token.is_none());
        assert_eq!(
            config.intents.resolve(["billing.credits"]),
            Some(Intent::Credits)
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let none =
            Env::from_pairs([("FULFILLMENT_ENTITLEMENTS_TOKEN", "service-token-0123456789")]);
        assert_eq!(
            Config::from_env(&none).unwrap_err(),
            ConfigError::Missing {
                name: "FULFILLMENT_BASIC_AUTH"
            }
        );
        for (name, value) in [
            ("FULFILLMENT_BASIC_AUTH", "no-colon-here-at-all"),
            ("FULFILLMENT_BASIC_AUTH", "user:short"),
            ("FULFILLMENT_ENTITLEMENTS_TOKEN", "short"),
            ("FULFILLMENT_ENTITLEMENTS_URL", "127.0.0.1:50051"),
            ("FULFILLMENT_UPSTREAM_TIMEOUT_MS", "0"),
            ("FULFILLMENT_UPSTREAM_TIMEOUT_MS", "5000"),
            ("FULFILLMENT_ADDR", "localhost"),
            ("FULFILLMENT_BILLING_PAGE_URL", "billing.example.com"),
        ] {
            match Config::from_env(&env(&[(name, value)])) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}={value}: expected invalid, got {other:?}"),
            }
        }
        assert_eq!(
            Config::from_env(&env(&[(
                "FULFILLMENT_BILLING_API_URL",
                "http://127.0.0.1:8082"
            )]))
            .unwrap_err(),
            ConfigError::Missing {
                name: "FULFILLMENT_BILLING_API_TOKEN"
            }
        );
        assert_eq!(
            Config::from_env(&env(&[("FULFILLMENT_HEADER_NAME", "x-token")])).unwrap_err(),
            ConfigError::Missing {
                name: "FULFILLMENT_HEADER_TOKEN"
            }
        );
        match Config::from_env(&env(&[
            ("FULFILLMENT_INTENT_STATUS", "billing.status,account"),
            ("FULFILLMENT_INTENT_MANAGE", "Account"),
        ])) {
            Err(ConfigError::Invalid { name, reason }) => {
                assert_eq!(name, "FULFILLMENT_INTENT_*");
                assert!(reason.contains("account"), "{reason}");
            }
            other => panic!("expected a clash, got {other:?}"),
        }
    }

    #[test]
    fn header_auth_alone_is_enough_and_names_are_configurable() {
        let config = Config::from_env(&Env::from_pairs([
            ("FULFILLMENT_HEADER_NAME", "X-Tollgate-Token"),
            ("FULFILLMENT_HEADER_TOKEN", "header-secret-0123456789"),
            ("FULFILLMENT_ENTITLEMENTS_TOKEN", "service-token-0123456789"),
            (
                "FULFILLMENT_INTENT_CREDITS",
                "credits.balance, How many credits",
            ),
        ]))
        .unwrap();
        assert_eq!(config.header_token.unwrap().0, "x-tollgate-token");
        assert_eq!(
            config.intents.resolve(["how many credits"]),
            Some(Intent::Credits)
        );
        assert_eq!(config.intents.resolve(["billing.credits"]), None);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let printed = format!(
            "{:?}",
            Config::from_env(&env(&[
                ("FULFILLMENT_HEADER_NAME", "x-token"),
                ("FULFILLMENT_HEADER_TOKEN", "header-secret-0123456789"),
                ("FULFILLMENT_BILLING_API_URL", "https://billing.internal"),
                ("FULFILLMENT_BILLING_API_TOKEN", "billing-token-0123456789"),
            ]))
            .unwrap()
        );
        for secret in [
            "correct-horse-battery",
            "service-token-0123456789",
            "header-secret-0123456789",
            "billing-token-0123456789",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
