use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tollgate_runtime::config::{ConfigError, Env, redact_url};

/// Everything entitlements reads from its environment (see README, "Configuration").
#[derive(Clone)]
pub struct Config {
    /// `ENTITLEMENTS_ADDR`, default 127.0.0.1:50051. Port 0 picks a free port (tests).
    pub addr: SocketAddr,
    /// `ENTITLEMENTS_METRICS_ADDR`, default 127.0.0.1:9464: Prometheus `GET /metrics`
    /// over plain HTTP/1.1 (the gRPC port only speaks gRPC and gRPC-Web).
    pub metrics_addr: SocketAddr,
    /// `DATABASE_URL` (required): billing's database, read (and credits written).
    pub database_url: String,
    /// `DATABASE_MAX_CONNECTIONS`, default 10.
    pub database_max_connections: u32,
    /// `AMQP_URL` (required): the change feed from billing's outbox.
    pub amqp_url: String,
    /// `REDIS_URL` (required): usage counters shared by every replica.
    pub redis_url: String,
    /// `ENTITLEMENTS_REDIS_PREFIX`, default `tollgate:`: prefix of every Redis key.
    pub redis_prefix: String,
    /// `TOLLGATE_PLANS`, default `config/plans.toml`.
    pub plans_path: PathBuf,
    /// `STRIPE_BILLING_ENABLED`, default true; false allows every check
    /// (reason ENFORCEMENT_DISABLED).
    pub enforcement: bool,
    /// `ENTITLEMENTS_SERVICE_TOKENS`: bearer tokens of internal callers, comma-separated.
    pub service_tokens: Vec<String>,
    /// `ENTITLEMENTS_JWT_HS256_SECRET`: end-user JWTs signed with this secret.
    pub jwt_hs256_secret: Option<String>,
    /// `ENTITLEMENTS_JWKS_URL`: end-user RS256 JWTs verified with these keys.
    pub jwks_url: Option<String>,
    /// `ENTITLEMENTS_JWT_ISSUER` / `ENTITLEMENTS_JWT_AUDIENCE`: required claims, if set.
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// `ENTITLEMENTS_CORS_ORIGINS`: browser origins allowed to call over gRPC-Web,
    /// comma-separated (`*` for any). Empty: no cross-origin calls.
    pub cors_origins: Vec<String>,
    /// `ENTITLEMENTS_MAX_WAIT_MS`, default 2000: longest an `at_least_version` call waits.
    pub max_wait: Duration,
    /// `ENTITLEMENTS_STORE_TIMEOUT_MS`, default 500: longest a call waits to read a
    /// customer from PostgreSQL before it answers degraded (each feature's
    /// `when_unavailable`), so a caller hears the policy rather than its own deadline.
    pub store_timeout: Duration,
    /// `ENTITLEMENTS_NEGATIVE_TTL_MS`, default 2000: how long "unknown subject" is remembered.
    pub negative_ttl: Duration,
    /// `ENTITLEMENTS_CACHE_MAX_AGE_SECS`, default 300: a cached customer is re-read
    /// from PostgreSQL after at most this long (each after 80–100 % of it, so they do
    /// not all expire together), even though the feed keeps it current.
    pub cache_max_age: Duration,
    /// `ENTITLEMENTS_GAP_TIMEOUT_MS`, default 5000: a version missing from the feed
    /// and absent from PostgreSQL this long is taken as rolled back.
    pub gap_timeout: Duration,
    /// `ENTITLEMENTS_POLL_MS`, default 100: how often PostgreSQL's outbox is read
    /// while the broker feed is down.
    pub poll_interval: Duration,
    /// `ENTITLEMENTS_RESERVATION_TTL_SECS`, default 900: default life of a credit hold.
    pub reservation_ttl: Duration,
    /// `SHUTDOWN_TIMEOUT_SECS`, default 25.
    pub shutdown_timeout: Duration,
}

fn millis(env: &Env, name: &'static str, default: u64) -> Result<Duration, ConfigError> {
    let value: u64 = env.or(name, default)?;
    if value == 0 {
        return Err(ConfigError::invalid(name, "must be at least 1"));
    }
    Ok(Duration::from_millis(value))
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let database_url = env.required_string("DATABASE_URL")?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                "DATABASE_URL",
                "must start with postgres://",
            ));
        }
        let amqp_url = env.required_string("AMQP_URL")?;
        if !(amqp_url.starts_with("amqp://") || amqp_url.starts_with("amqps://")) {
            return Err(ConfigError::invalid(
                "AMQP_URL",
                "must start with amqp:// or amqps://",
            ));
        }
        let redis_url = env.required_string("REDIS_URL")?;
        if !(redis_url.starts_with("redis://") || redis_url.starts_with("rediss://")) {
            return Err(ConfigError::invalid(
                "REDIS_URL",
                "must start with redis:// or rediss://",
            ));
        }
        let service_tokens = env.list("ENTITLEMENTS_SERVICE_TOKENS");
        if service_tokens.iter().any(|t| t.len() < 16) {
            return Err(ConfigError::invalid(
                "ENTITLEMENTS_SERVICE_TOKENS",
                "every token must be at least 16 characters",
            ));
        }
        let jwt_hs256_secret = env.raw("ENTITLEMENTS_JWT_HS256_SECRET");
        if jwt_hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::invalid(
                "ENTITLEMENTS_JWT_HS256_SECRET",
                "must be at least 32 bytes",
            ));
        }
        let jwks_url = env.raw("ENTITLEMENTS_JWKS_URL");
        if jwks_url
            .as_ref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err(ConfigError::invalid(
                "ENTITLEMENTS_JWKS_URL",
                "must be an http(s) URL",
            ));
        }
        if service_tokens.is_empty() && jwt_hs256_secret.is_none() && jwks_url.is_none() {
            return Err(ConfigError::Missing {
                name: "ENTITLEMENTS_SERVICE_TOKENS",
            });
        }
        Ok(Self {
            addr: env.or(
                "ENTITLEMENTS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 50051)),
            )?,
            metrics_addr: env.or(
                "ENTITLEMENTS_METRICS_ADDR",
                SocketAddr::from(([127, 0, 0, 1], 9464)),
            )?,
            database_url,
            database_max_connections: env.or("DATABASE_MAX_CONNECTIONS", 10)?,
            amqp_url,
            redis_url,
            redis_prefix: env
                .raw("ENTITLEMENTS_REDIS_PREFIX")
                .unwrap_or_else(|| "tollgate:".into()),
            plans_path: env.or(
                "TOLLGATE_PLANS",
                PathBuf::from(tollgate_plans::DEFAULT_PATH),
            )?,
            enforcement: env.flag("STRIPE_BILLING_ENABLED", true)?,
            service_tokens,
            jwt_hs256_secret,
            jwks_url,
            jwt_issuer: env.raw("ENTITLEMENTS_JWT_ISSUER"),
            jwt_audience: env.raw("ENTITLEMENTS_JWT_AUDIENCE"),
            cors_origins: env.list("ENTITLEMENTS_CORS_ORIGINS"),
            max_wait: millis(env, "ENTITLEMENTS_MAX_WAIT_MS", 2000)?,
            store_timeout: millis(env, "ENTITLEMENTS_STORE_TIMEOUT_MS", 500)?,
            negative_ttl: millis(env, "ENTITLEMENTS_NEGATIVE_TTL_MS", 2000)?,
            cache_max_age: Duration::from_secs(env.or("ENTITLEMENTS_CACHE_MAX_AGE_SECS", 300)?),
            gap_timeout: millis(env, "ENTITLEMENTS_GAP_TIMEOUT_MS", 5000)?,
            poll_interval: millis(env, "ENTITLEMENTS_POLL_MS", 100)?,
            reservation_ttl: Duration::from_secs(env.or("ENTITLEMENTS_RESERVATION_TTL_SECS", 900)?),
            shutdown_timeout: Duration::from_secs(env.or("SHUTDOWN_TIMEOUT_SECS", 25)?),
        })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addr", &self.addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("plans_path", &self.plans_path)
            .field("enforcement", &self.enforcement)
            .field(
                "service_tokens",
                &format_args!("<{} redacted>", self.service_tokens.len()),
            )
            .field(
                "jwt_hs256_secret",
                &self.jwt_hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("cors_origins", &self.cors_origins)
            .field("max_wait", &self.max_wait)
            .field("store_timeout", &self.store_timeout)
            .field("negative_ttl", &self.negative_ttl)
            .field("cache_max_age", &self.cache_max_age)
            .field("gap_timeout", &self.gap_timeout)
            .field("poll_interval", &self.poll_interval)
            .field("reservation_ttl", &self.reservation_ttl)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(extra: &[(&str, &str)]) -> Env {
        let mut pairs = vec![
            ("DATABASE_URL", "postgres://u:pw@db/app"),
            ("AMQP_URL", "amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
            (
                "ENTITLEMENTS_SERVICE_TOKENS",
                "a-very-long-service-token,another-long-token-here",
            ),
        ];
        pairs.extend_from_slice(extra);
        Env::from_pairs(pairs)
    }

    #[test]
    fn defaults_and_redaction() {
        let config = Config::from_env(&env(&[])).unwrap();
        assert_eq!(config.addr, "127.0.0.1:50051".parse().unwrap());
        assert!(config.enforcement);
        assert_eq!(config.service_tokens.len(), 2);
        let printed = format!("{config:?}");
        for secret in ["hunter2", "a-very-long-service-token", ":pw@"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }

    #[test]
    fn errors_name_the_variable() {
        for (name, value) in [
            ("ENTITLEMENTS_ADDR", "localhost"),
            ("STRIPE_BILLING_ENABLED", "perhaps"),
            ("REDIS_URL", "http://redis"),
            ("ENTITLEMENTS_SERVICE_TOKENS", "short"),
            ("ENTITLEMENTS_JWT_HS256_SECRET", "too-short"),
            ("ENTITLEMENTS_MAX_WAIT_MS", "0"),
            ("ENTITLEMENTS_STORE_TIMEOUT_MS", "0"),
        ] {
            match Config::from_env(&env(&[(name, value)])) {
                Err(ConfigError::Invalid { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}={value}: expected invalid, got {other:?}"),
            }
        }
        let no_auth = Env::from_pairs([
            ("DATABASE_URL", "postgres://db/app"),
            ("AMQP_URL", "amqp://x"),
            ("REDIS_URL", "redis://r"),
        ]);
        assert_eq!(
            Config::from_env(&no_auth).unwrap_err(),
            ConfigError::Missing {
                name: "ENTITLEMENTS_SERVICE_TOKENS"
            }
        );
    }
}
