//! Every way a webhook request can fail, mapped once to an HTTP answer.
//! Bodies are short and generic: the details go to logs and metrics, never
//! back to whoever sent a bad signature.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use tollgate_broker::PublishError;
use tollgate_events::{EnvelopeError, SignatureError};
use tollgate_runtime::BodyError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("signature refused: {0}")]
    Signature(#[from] SignatureError),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the body: {0}")]
    Body(String),
    #[error("not a Stripe event: {0}")]
    Envelope(#[from] EnvelopeError),
    #[error("event livemode={event} but this endpoint has STRIPE_LIVEMODE={configured}")]
    LivemodeMismatch { event: bool, configured: bool },
    #[error("event not stored: {0}")]
    Unavailable(#[from] PublishError),
}

impl From<BodyError> for WebhookError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge { limit } => Self::TooLarge { limit },
            BodyError::Read(why) => Self::Body(why),
        }
    }
}

impl WebhookError {
    /// Stable code, in the body and in metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(_) => "invalid_signature",
            Self::TooLarge { .. } => "payload_too_large",
            Self::Body(_) => "bad_body",
            Self::Envelope(_) => "invalid_event",
            Self::LivemodeMismatch { .. } => "livemode_mismatch",
            Self::Unavailable(_) => "unavailable",
        }
    }

    fn public_message(&self) -> &'static str {
        match self {
            Self::Signature(_) => "Signature verification failed.",
            Self::TooLarge { .. } => "Payload too large.",
            Self::Body(_) => "The request body could not be read.",
            Self::Envelope(_) => "The body is not a valid Stripe event.",
            Self::LivemodeMismatch { .. } => "The event's livemode does not match this endpoint.",
            Self::Unavailable(_) => "Temporarily unavailable; retry later.",
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unavailable(_)) {
            response.insert_header(("Retry-After", "5"));
        }
        response.json(json!({ "error": { "code": self.code(), "message": self.public_message() } }))
    }
}
