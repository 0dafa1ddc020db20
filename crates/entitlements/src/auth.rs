//! Who is calling: an internal service (a bearer token from
//! `ENTITLEMENTS_SERVICE_TOKENS`, compared in constant time) or an end user (a JWT:
//! HS256 with a shared secret, or RS256 with a key from the JWKS URL). Users may
//! only ask about themselves, and only read.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::config::Config;
use crate::model::Subject;

/// Unknown key ids trigger at most one JWKS fetch per this interval.
const JWKS_REFETCH: Duration = Duration::from_secs(30);
/// Known keys are refreshed this often (key rotation).
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Service,
    User {
        user_id: String,
        /// Only when the token says it is verified (or does not say otherwise).
        email: Option<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("the bearer token is not valid")]
    Invalid,
    #[error("this token may only ask about its own subject")]
    OtherSubject,
    #[error("end-user tokens may not call {0}; use a service token")]
    ServiceOnly(&'static str),
}

impl Caller {
    pub fn may_ask_about(&self, subject: &Subject) -> Result<(), AuthError> {
        match self {
            Self::Service => Ok(()),
            Self::User { user_id, email } => {
                let own = match subject {
                    Subject::UserId(id) => id == user_id,
                    Subject::Email(e) => email.as_deref() == Some(e.as_str()),
                };
                if own {
                    Ok(())
                } else {
                    Err(AuthError::OtherSubject)
                }
            }
        }
    }

    pub fn must_be_service(&self, rpc: &'static str) -> Result<(), AuthError> {
        match self {
            Self::Service => Ok(()),
            Self::User { .. } => Err(AuthError::ServiceOnly(rpc)),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::User { .. } => "user",
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    email: Option<String>,
    email_verified: Option<bool>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    fetched: Mutex<Option<Instant>>,
}

pub struct Auth {
    tokens: Vec<Vec<u8>>,
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl Auth {
    pub fn new(config: &Config) -> Self {
        Self {
            tokens: config
                .service_tokens
                .iter()
                .map(|t| t.as_bytes().to_vec())
                .collect(),
            hs256: config
                .jwt_hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: config.jwks_url.as_ref().map(|url| Jwks {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("an HTTP client with default settings builds"),
                keys: RwLock::new(HashMap::new()),
                fetched: Mutex::new(None),
            }),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        }
    }

    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        // Compare with every configured token, without stopping at the first match.
        let mut matched = subtle::Choice::from(0);
        for known in &self.tokens {
            matched |= known.as_slice().ct_eq(token.as_bytes());
        }
        if bool::from(matched) {
            return Ok(Caller::Service);
        }
        self.user(token).await
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    async fn user(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let claims: Claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or(AuthError::Invalid)?;
                jsonwebtoken::decode(token, key, &self.validation(Algorithm::HS256))
                    .map_err(|_| AuthError::Invalid)?
                    .claims
            }
            Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(AuthError::Invalid)?;
                let kid = header.kid.ok_or(AuthError::Invalid)?;
                let key = jwks.key(&kid).await.ok_or(AuthError::Invalid)?;
                jsonwebtoken::decode(token, &key, &self.validation(Algorithm::RS256))
                    .map_err(|_| AuthError::Invalid)?
                    .claims
            }
            _ => return Err(AuthError::Invalid),
        };
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid);
        }
        Ok(Caller::User {
            user_id: claims.sub,
            email: claims
                .email
                .filter(|_| claims.email_verified != Some(false))
                .map(|e| e.to_lowercase()),
        })
    }
}

impl Jwks {
    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        let stale = self
            .fetched
            .lock()
            .is_none_or(|at| at.elapsed() > JWKS_MAX_AGE);
        if !stale && let Some(key) = self.keys.read().get(kid) {
            return Some(key.clone());
        }
        let may_fetch = {
            let mut fetched = self.fetched.lock();
            let allowed = fetched.is_none_or(|at| at.elapsed() > JWKS_REFETCH) || stale;
            if allowed {
                *fetched = Some(Instant::now());
            }
            allowed
        };
        if may_fetch {
            match self.fetch().await {
                Ok(keys) => *self.keys.write() = keys,
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.url, "cannot fetch the JWKS; keeping known keys")
                }
            }
        }
        self.keys.read().get(kid).cloned()
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let Some(kid) = &jwk.common.key_id
                && let Ok(key) = DecodingKey::from_jwk(jwk)
            {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_may_only_ask_about_themselves() {
        let user = Caller::User {
            user_id: "u1".into(),
            email: Some("u1@example.com".into()),
        };
        assert!(user.may_ask_about(&Subject::UserId("u1".into())).is_ok());
        assert!(
            user.may_ask_about(&Subject::Email("u1@example.com".into()))
                .is_ok()
        );
        assert_eq!(
            user.may_ask_about(&Subject::UserId("u2".into())),
            Err(AuthError::OtherSubject)
        );
        assert!(user.must_be_service("ConsumeCredits").is_err());
        assert!(
            Caller::Service
                .may_ask_about(&Subject::UserId("u2".into()))
                .is_ok()
        );
    }
}
