//! Who is calling: an internal service (a bearer token from
//! `ENTITLEMENTS_SERVICE_TOKENS`, compared in constant time) or an end user (a JWT:
//! HS256 with a shared secret, or RS256 with a key from the JWKS URL). Users may
//! only ask about themselves, and only read.

use tollgate_auth::{JwtSettings, JwtVerifier, TokenSet, bearer_token};
use tonic::metadata::MetadataMap;

use crate::config::Config;
use crate::model::Subject;

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

/// Verification itself lives in `tollgate-auth` (shared with billing's HTTP API).
pub struct Auth {
    tokens: TokenSet,
    jwt: JwtVerifier,
}

impl Auth {
    pub fn new(config: &Config) -> Self {
        Self {
            tokens: TokenSet::new(&config.service_tokens),
            jwt: JwtVerifier::new(&JwtSettings {
                hs256_secret: config.jwt_hs256_secret.clone(),
                jwks_url: config.jwks_url.clone(),
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
            }),
        }
    }

    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let header = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let token = bearer_token(header).ok_or(AuthError::Missing)?;
        if self.tokens.contains(token) {
            return Ok(Caller::Service);
        }
        let user = self
            .jwt
            .verify(token)
            .await
            .map_err(|_| AuthError::Invalid)?;
        Ok(Caller::User {
            user_id: user.user_id,
            email: user.email,
        })
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
