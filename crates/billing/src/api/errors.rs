//! Every way an API request fails, mapped once to a status and a stable code. Bodies
//! are `{"error": {"code": "...", "message": "..."}}`; server-side failures say only
//! what the caller can act on, the cause goes to the log.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::account::AccountError;
use crate::admin::AdminError;
use crate::dead_letters::DeadLetterError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing `Authorization: Bearer <token>` header")]
    Unauthenticated,
    #[error("the bearer token is not valid")]
    InvalidToken,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("send the body as application/json")]
    UnsupportedMediaType,
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("too many requests; try again in {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("{0} is not configured on this billing instance")]
    NotConfigured(&'static str),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("the database is unavailable")]
    Database(#[source] sqlx::Error),
    #[error("the broker is unavailable")]
    Broker(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Invalid(message) => Self::Invalid(message),
            AdminError::NoSuchCustomer => {
                Self::NotFound("no customer with that user id".to_string())
            }
            AdminError::InsufficientCredits { balance } => Self::Conflict {
                code: "insufficient_credits",
                message: format!("the balance ({balance}) cannot go below zero"),
            },
            AdminError::IdempotencyConflict => Self::Conflict {
                code: "idempotency_conflict",
                message: "this idempotency key was used for another adjustment".to_string(),
            },
            AdminError::Database(e) => Self::Database(e),
            AdminError::Billing(e) => Self::Account(AccountError::from(e)),
        }
    }
}

impl From<DeadLetterError> for ApiError {
    fn from(error: DeadLetterError) -> Self {
        match error {
            DeadLetterError::NotFound(id) => Self::NotFound(format!("no dead letter {id}")),
            DeadLetterError::AlreadyResolved { id, resolution } => Self::Conflict {
                code: "already_resolved",
                message: format!("dead letter {id} is already {resolution}"),
            },
            DeadLetterError::Database(e) => Self::Database(e),
            other => Self::Broker(other.to_string()),
        }
    }
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(message.into())
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken => "invalid_token",
            Self::Forbidden(_) => "forbidden",
            Self::Invalid(_) => "invalid_request",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound(_) => "not_found",
            Self::Conflict { code, .. } => code,
            Self::RateLimited { .. } => "rate_limited",
            Self::NotConfigured(_) => "not_configured",
            Self::Account(e) => e.code(),
            Self::Database(_) => "database_unavailable",
            Self::Broker(_) => "broker_unavailable",
        }
    }

    fn message(&self) -> String {
        match self {
            // The caller can act on these; their details stay in the log.
            Self::Account(AccountError::Database(_)) | Self::Database(_) => {
                "the database is unavailable; try again shortly".to_string()
            }
            Self::Account(AccountError::StripeUnavailable(_)) => {
                "Stripe is unavailable; try again shortly".to_string()
            }
            Self::Account(AccountError::StripeRejected(r)) => {
                format!("Stripe refused the request: {}", r.message)
            }
            Self::Broker(_) => "the broker is unavailable; try again shortly".to_string(),
            other => other.to_string(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => Some(*retry_after),
            Self::Account(e) => e.retry_after(),
            Self::Database(_) | Self::Broker(_) => Some(Duration::from_secs(5)),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthenticated | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::NotConfigured(_) | Self::Database(_) | Self::Broker(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Account(e) => {
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(code = self.code(), error = %error_chain(self), "API request failed");
        }
        let mut response = HttpResponse::build(status);
        if let Some(after) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, after.as_secs().max(1).to_string()));
        }
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tollgate\""),
            ));
        }
        response.json(json!({ "error": { "code": self.code(), "message": self.message() } }))
    }
}

/// The error and its causes, for the log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
