//! Who is calling (a user's JWT, a service token, an admin token), and how often. The
//! [`Caller`] extractor authenticates every request that names it and spends one token
//! of the caller's rate-limit bucket; requests that fail authentication spend from their
//! client address's bucket, so guessing tokens is limited too.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use parking_lot::Mutex;
use tollgate_auth::{JwtSettings, JwtVerifier, TokenSet, bearer_token};

use super::ApiState;
use super::config::{ApiConfig, NamedToken};
use super::errors::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An end user; may only see and act on their own billing.
    User {
        user_id: String,
        /// Verified email from the token, lower-cased.
        email: Option<String>,
    },
    /// An internal service; acts on behalf of the user it names.
    Service { name: String },
    /// An operator's token with the admin scope (may also do what services do).
    Admin { name: String },
}

impl Caller {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::Service { .. } => "service",
            Self::Admin { .. } => "admin",
        }
    }

    /// The user a request is about: a user's own id (a user naming anyone else is
    /// refused), or the user a service or admin names (required for them).
    pub fn subject(&self, requested: Option<&str>) -> Result<String, ApiError> {
        match (self, requested) {
            (Self::User { user_id, .. }, None) => Ok(user_id.clone()),
            (Self::User { user_id, .. }, Some(requested)) if requested == user_id => {
                Ok(user_id.clone())
            }
            (Self::User { .. }, Some(_)) => Err(ApiError::Forbidden(
                "a user token may only act on its own user",
            )),
            (_, Some(requested)) => {
                validate_user_id(requested)?;
                Ok(requested.to_string())
            }
            (_, None) => Err(ApiError::invalid(
                "service callers must name the user (`user_id`)",
            )),
        }
    }

    /// Service and admin callers only.
    pub fn require_service(&self) -> Result<(), ApiError> {
        match self {
            Self::User { .. } => Err(ApiError::Forbidden(
                "this endpoint is for service callers only",
            )),
            _ => Ok(()),
        }
    }

    /// Admin callers only; their admin id (for the audit log).
    pub fn require_admin(&self) -> Result<&str, ApiError> {
        match self {
            Self::Admin { name } => Ok(name),
            _ => Err(ApiError::Forbidden("this endpoint needs an admin token")),
        }
    }

    fn bucket(&self) -> String {
        match self {
            Self::User { user_id, .. } => format!("user:{user_id}"),
            Self::Service { name } => format!("service:{name}"),
            Self::Admin { name } => format!("admin:{name}"),
        }
    }
}

/// User ids as account operations accept them (Stripe's limits).
pub fn validate_user_id(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty()
        || user_id.trim() != user_id
        || user_id.chars().count() > 200
        || user_id.chars().any(char::is_control)
    {
        return Err(ApiError::invalid(
            "`user_id` must be 1 to 200 characters, without surrounding spaces or control characters",
        ));
    }
    Ok(())
}

/// Checks bearer tokens: admin tokens, then service tokens, then user JWTs.
pub struct Authenticator {
    services: TokenSet,
    service_names: Vec<String>,
    admins: TokenSet,
    admin_names: Vec<String>,
    jwt: JwtVerifier,
}

impl Authenticator {
    pub fn new(config: &ApiConfig) -> Self {
        let split = |tokens: &[NamedToken]| {
            (
                TokenSet::new(tokens.iter().map(|t| t.token.as_str())),
                tokens.iter().map(|t| t.name.clone()).collect(),
            )
        };
        let (services, service_names) = split(&config.service_tokens);
        let (admins, admin_names) = split(&config.admin_tokens);
        Self {
            services,
            service_names,
            admins,
            admin_names,
            jwt: JwtVerifier::new(&JwtSettings {
                hs256_secret: config.jwt_hs256_secret.clone(),
                jwks_url: config.jwks_url.clone(),
                issuer: config.jwt_issuer.clone(),
                audience: config.jwt_audience.clone(),
            }),
        }
    }

    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, ApiError> {
        let token = authorization
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthenticated)?;
        // Both sets are always compared, so timing does not tell which kind a token is.
        let admin = self.admins.position(token);
        let service = self.services.position(token);
        if let Some(i) = admin {
            return Ok(Caller::Admin {
                name: self.admin_names[i].clone(),
            });
        }
        if let Some(i) = service {
            return Ok(Caller::Service {
                name: self.service_names[i].clone(),
            });
        }
        let user = self
            .jwt
            .verify(token)
            .await
            .map_err(|_| ApiError::InvalidToken)?;
        Ok(Caller::User {
            user_id: user.user_id,
            email: user.email,
        })
    }
}

/// Token buckets per caller, in this process: `per_minute` requests a minute, in bursts
/// of up to `per_minute`. Replicas each keep their own (the checkout limit, which guards
/// Stripe, is the one shared through PostgreSQL).
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 10_000;

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // A full bucket refilled for a minute is the same as a new one: forget those.
            buckets.retain(|_, b| now.saturating_duration_since(b.at) < Duration::from_secs(60));
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let peer = req
            .peer_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
        Box::pin(async move {
            let state = state.ok_or(ApiError::NotConfigured("the API state"))?;
            let result = state.auth.authenticate(authorization.as_deref()).await;
            let bucket = match &result {
                Ok(caller) => caller.bucket(),
                Err(_) => format!("address:{peer}"),
            };
            if let Err(retry_after) = state.limiter.check(&bucket, Instant::now()) {
                metrics::counter!("tollgate_billing_api_rate_limited_total").increment(1);
                return Err(ApiError::RateLimited { retry_after });
            }
            let caller = result?;
            tracing::Span::current().record("caller", caller.kind());
            Ok(caller)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_configured_rate_per_caller() {
        let limiter = RateLimiter::new(3);
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("user:a", start).is_ok());
        }
        let wait = limiter.check("user:a", start).unwrap_err();
        assert_eq!(wait.as_secs(), 20, "one request every 20 s at 3 a minute");
        assert!(limiter.check("user:b", start).is_ok(), "per caller");
        assert!(
            limiter
                .check("user:a", start + Duration::from_secs(20))
                .is_ok()
        );
        assert!(
            limiter
                .check("user:a", start + Duration::from_secs(20))
                .is_err()
        );
    }

    #[test]
    fn users_only_ever_act_on_themselves_and_services_must_name_someone() {
        let user = Caller::User {
            user_id: "u1".into(),
            email: None,
        };
        assert_eq!(user.subject(None).unwrap(), "u1");
        assert_eq!(user.subject(Some("u1")).unwrap(), "u1");
        assert!(matches!(
            user.subject(Some("u2")),
            Err(ApiError::Forbidden(_))
        ));
        assert!(user.require_service().is_err());
        let service = Caller::Service { name: "f".into() };
        assert_eq!(service.subject(Some("u2")).unwrap(), "u2");
        assert!(matches!(service.subject(None), Err(ApiError::Invalid(_))));
        assert!(matches!(
            service.subject(Some(" u2")),
            Err(ApiError::Invalid(_))
        ));
        assert!(service.require_admin().is_err());
        let admin = Caller::Admin { name: "ops".into() };
        assert_eq!(admin.require_admin().unwrap(), "ops");
        assert!(admin.require_service().is_ok());
    }
}
