//! Every way a webhook request is refused, mapped once to an HTTP answer. Bodies
//! say what is wrong with the request; they never echo secrets, and the logs get
//! only the stable code.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use tollgate_runtime::BodyError;

use crate::dialogflow::ParseError;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("missing or wrong credentials")]
    Unauthorized { basic: bool },
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the body: {0}")]
    Body(String),
    #[error(transparent)]
    Parse(#[from] ParseError),
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
    /// Stable code, in the body, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::TooLarge { .. } => "payload_too_large",
            Self::Body(_) => "bad_body",
            Self::Parse(ParseError::Json(_)) => "invalid_json",
            Self::Parse(ParseError::Unrecognized) => "unrecognized_request",
            Self::Parse(ParseError::Invalid { .. }) => "invalid_request",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Unauthorized { .. } => {
                "Authenticate with the configured basic auth or header token.".into()
            }
            Self::Parse(ParseError::Unrecognized) => "Expected a Dialogflow ES (queryResult) or CX (fulfillmentInfo, sessionInfo) webhook request.".into(),
            other => other.to_string(),
        }
    }
}

impl ResponseError for WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Self::Unauthorized { basic: true } = self {
            response.insert_header(("WWW-Authenticate", "Basic realm=\"tollgate-fulfillment\""));
        }
        response.json(json!({ "error": { "code": self.code(), "message": self.message() } }))
    }
}
