//! Every way an RPC can fail, mapped once to a gRPC status with a stable code
//! (`x-tollgate-error` metadata). Messages name what was wrong with the request,
//! never internal details.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::credits::CreditError;
use crate::feed::WaitError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Wait(#[from] WaitError),
    #[error(transparent)]
    Credit(#[from] CreditError),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument(message.into())
    }

    /// Stable code, in the `x-tollgate-error` metadata and in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "invalid_argument",
            Self::Auth(AuthError::Missing) => "unauthenticated",
            Self::Auth(AuthError::Invalid) => "invalid_token",
            Self::Auth(AuthError::OtherSubject) => "other_subject",
            Self::Auth(AuthError::ServiceOnly(_)) => "service_only",
            Self::Wait(WaitError::NotYet { .. }) => "version_not_applied",
            Self::Wait(WaitError::Unavailable { .. }) => "store_unavailable",
            Self::Credit(CreditError::KeyReused) => "idempotency_key_reused",
            Self::Credit(CreditError::NoSuchReservation) => "no_such_reservation",
            Self::Credit(CreditError::SettleTooMuch { .. }) => "settle_exceeds_reservation",
            Self::Credit(CreditError::Database(_) | CreditError::Stopped) => "store_unavailable",
            Self::Unavailable(_) => "store_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn grpc_code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::Auth(AuthError::Missing | AuthError::Invalid) => Code::Unauthenticated,
            Self::Auth(AuthError::OtherSubject | AuthError::ServiceOnly(_)) => {
                Code::PermissionDenied
            }
            Self::Wait(WaitError::NotYet { .. }) => Code::FailedPrecondition,
            Self::Wait(WaitError::Unavailable { .. }) => Code::Unavailable,
            Self::Credit(CreditError::KeyReused | CreditError::SettleTooMuch { .. }) => {
                Code::InvalidArgument
            }
            Self::Credit(CreditError::NoSuchReservation) => Code::NotFound,
            Self::Credit(CreditError::Database(_) | CreditError::Stopped) => Code::Unavailable,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Internal(_) => Code::Internal,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Credit(CreditError::Database(_))
            | Self::Wait(WaitError::Unavailable { .. })
            | Self::Unavailable(_) => {
                "the backing store is unavailable; retry (credit operations are idempotent by key)"
                    .into()
            }
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let code = error.grpc_code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::warn!(error = %error_chain(&error), code = error.code(), "request failed");
        } else {
            tracing::debug!(error = %error, code = error.code(), "request refused");
        }
        metrics::counter!("tollgate_entitlements_errors_total", "code" => error.code())
            .increment(1);
        let mut status = Status::new(code, error.public_message());
        status.metadata_mut().insert(
            "x-tollgate-error",
            tonic::metadata::MetadataValue::from_static(error.code()),
        );
        status
    }
}

/// The error and all its causes, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
