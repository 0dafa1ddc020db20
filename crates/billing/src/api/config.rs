//! The HTTP API's configuration (README, "Configuration").

use std::net::SocketAddr;

use tollgate_runtime::config::{ConfigError, Env};

/// Everything the frontend API reads from the environment. The API runs when at least
/// one way to authenticate is configured (a token list or a JWT setting); otherwise
/// billing serves no public API at all.
#[derive(Clone)]
pub struct ApiConfig {
    /// `BILLING_API_ADDR`, default 127.0.0.1:8082 (port 0 picks a free port: tests).
    pub addr: SocketAddr,
    /// `BILLING_API_SERVICE_TOKENS`: bearer tokens of internal callers (the Dialogflow
    /// fulfillment, backends), comma-separated, each ≥ 16 characters. An entry may be
    /// `name:token`; the name identifies the caller in logs. Service callers act on any
    /// user by naming them (`user_id`).
    pub service_tokens: Vec<NamedToken>,
    /// `BILLING_API_ADMIN_TOKENS`: bearer tokens with the admin scope (the `/v1/admin`
    /// endpoints, and everything a service token may do), same format. The name is the
    /// admin id written to the audit log (a token without a name is audited as
    /// `admin-<n>`, its position in the list).
    pub admin_tokens: Vec<NamedToken>,
    /// `BILLING_API_JWT_HS256_SECRET`: end-user JWTs signed with this secret (≥ 32 bytes).
    pub jwt_hs256_secret: Option<String>,
    /// `BILLING_API_JWKS_URL`: end-user RS256 JWTs verified with this key set.
    pub jwks_url: Option<String>,
    /// `BILLING_API_JWT_ISSUER`, `BILLING_API_JWT_AUDIENCE`: required `iss` / `aud` when set.
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    /// `BILLING_API_CORS_ORIGINS`: browser origins allowed to call the API, comma-separated
    /// (`*` for any). Empty: no cross-origin calls.
    pub cors_origins: Vec<String>,
    /// `BILLING_API_RATE_LIMIT`, default 120: requests per minute per caller (user, token,
    /// or for unauthenticated requests the client address), in bursts of up to as many.
    pub rate_limit_per_minute: u32,
}

/// A bearer token and the name it is known by.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedToken {
    pub name: String,
    pub token: String,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:<redacted>", self.name)
    }
}

fn tokens(env: &Env, name: &'static str, prefix: &str) -> Result<Vec<NamedToken>, ConfigError> {
    env.list(name)
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            // `name:token` when the part before the first colon is a plain name.
            let (label, token) = match entry.split_once(':') {
                Some((label, token))
                    if !label.is_empty()
                        && label.len() <= 64
                        && label
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)) =>
                {
                    (label.to_string(), token.to_string())
                }
                _ => (format!("{prefix}-{}", i + 1), entry),
            };
            if token.len() < 16 {
                return Err(ConfigError::invalid(
                    name,
                    "every token must be at least 16 characters",
                ));
            }
            Ok(NamedToken { name: label, token })
        })
        .collect()
}

impl ApiConfig {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let service_tokens = tokens(env, "BILLING_API_SERVICE_TOKENS", "service")?;
        let admin_tokens = tokens(env, "BILLING_API_ADMIN_TOKENS", "admin")?;
        if admin_tokens
            .iter()
            .any(|a| service_tokens.iter().any(|s| s.token == a.token))
        {
            return Err(ConfigError::invalid(
                "BILLING_API_ADMIN_TOKENS",
                "an admin token may not also be a service token",
            ));
        }
        let jwt_hs256_secret = env.raw("BILLING_API_JWT_HS256_SECRET");
        if jwt_hs256_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(ConfigError::invalid(
                "BILLING_API_JWT_HS256_SECRET",
                "must be at least 32 bytes",
            ));
        }
        let jwks_url = env.raw("BILLING_API_JWKS_URL");
        if jwks_url
            .as_ref()
            .is_some_and(|u| !(u.starts_with("https://") || u.starts_with("http://")))
        {
            return Err(ConfigError::invalid(
                "BILLING_API_JWKS_URL",
                "must be an http(s) URL",
            ));
        }
        let cors_origins = env.list("BILLING_API_CORS_ORIGINS");
        if let Some(bad) = cors_origins
            .iter()
            .find(|o| *o != "*" && !(o.starts_with("https://") || o.starts_with("http://")))
        {
            return Err(ConfigError::invalid(
                "BILLING_API_CORS_ORIGINS",
                format!("`{bad}` is not an origin such as https://app.example.com"),
            ));
        }
        let rate_limit_per_minute: u32 = env.or("BILLING_API_RATE_LIMIT", 120)?;
        if rate_limit_per_minute == 0 {
            return Err(ConfigError::invalid(
                "BILLING_API_RATE_LIMIT",
                "must be at least 1",
            ));
        }
        Ok(Self {
            addr: env.or("BILLING_API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8082)))?,
            service_tokens,
            admin_tokens,
            jwt_hs256_secret,
            jwks_url,
            jwt_issuer: env.raw("BILLING_API_JWT_ISSUER"),
            jwt_audience: env.raw("BILLING_API_JWT_AUDIENCE"),
            cors_origins,
            rate_limit_per_minute,
        })
    }

    /// Whether any caller could authenticate (else the API is not served).
    pub fn enabled(&self) -> bool {
        !self.service_tokens.is_empty()
            || !self.admin_tokens.is_empty()
            || self.jwt_hs256_secret.is_some()
            || self.jwks_url.is_some()
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("addr", &self.addr)
            .field("service_tokens", &self.service_tokens)
            .field("admin_tokens", &self.admin_tokens)
            // Named so that the printed configuration never contains the word "secret".
            .field(
                "jwt_hs256",
                &self.jwt_hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("jwks_url", &self.jwks_url)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("cors_origins", &self.cors_origins)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_credentials_and_tokens_are_named_and_never_printed() {
        let config = ApiConfig::from_env(&Env::from_pairs::<&str, &str>([])).unwrap();
        assert!(!config.enabled());
        assert_eq!(config.addr.port(), 8082);
        assert_eq!(config.rate_limit_per_minute, 120);

        let config = ApiConfig::from_env(&Env::from_pairs([
            (
                "BILLING_API_SERVICE_TOKENS",
                "fulfillment:svc-secret-0123456789, plain-secret-0123456789",
            ),
            (
                "BILLING_API_ADMIN_TOKENS",
                "ops.alice:adm-secret-0123456789",
            ),
            (
                "BILLING_API_CORS_ORIGINS",
                "https://app.test, http://localhost:5173",
            ),
            ("BILLING_API_RATE_LIMIT", "30"),
        ]))
        .unwrap();
        assert!(config.enabled());
        let names: Vec<&str> = config
            .service_tokens
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["fulfillment", "service-2"]);
        assert_eq!(config.admin_tokens[0].name, "ops.alice");
        assert_eq!(config.admin_tokens[0].token, "adm-secret-0123456789");
        assert_eq!(config.cors_origins.len(), 2);
        let printed = format!("{config:?}");
        assert!(!printed.contains("secret"), "{printed}");

        for (name, value) in [
            ("BILLING_API_SERVICE_TOKENS", "short"),
            ("BILLING_API_JWT_HS256_SECRET", "too-short"),
            ("BILLING_API_JWKS_URL", "file:///etc/keys"),
            ("BILLING_API_CORS_ORIGINS", "app.test"),
            ("BILLING_API_RATE_LIMIT", "0"),
        ] {
            assert!(
                matches!(
                    ApiConfig::from_env(&Env::from_pairs([(name, value)])),
                    Err(ConfigError::Invalid { name: n, .. }) if n == name
                ),
                "{name}={value}"
            );
        }
        let same = Env::from_pairs([
            ("BILLING_API_SERVICE_TOKENS", "same-secret-0123456789"),
            ("BILLING_API_ADMIN_TOKENS", "same-secret-0123456789"),
        ]);
        assert!(ApiConfig::from_env(&same).is_err());
    }
}
