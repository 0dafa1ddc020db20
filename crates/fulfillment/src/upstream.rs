//! The two services fulfillment asks: entitlements over gRPC (who the user is,
//! what they may use, their credits) and billing's HTTP API (checkout and portal
//! links). Every call is bounded: Dialogflow abandons a webhook after 5 s, so a
//! slow dependency must turn into a polite fallback answer, never into silence.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::json;
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

impl UpstreamError {
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::Failed(_) => "error",
        }
    }
}

/// The time a turn has left: each call gets the smaller of the configured
/// per-call bound and what remains, so two calls in a row still fit in it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    per_call: Duration,
}

/// The longest a whole turn spends on upstream calls (Dialogflow waits 5 s).
const TURN_BUDGET: Duration = Duration::from_millis(4500);

impl Deadline {
    pub fn start(per_call: Duration) -> Self {
        Self {
            at: Instant::now() + TURN_BUDGET,
            per_call,
        }
    }

    fn next_call(&self) -> Duration {
        self.per_call
            .min(self.at.saturating_duration_since(Instant::now()))
    }
}

fn record(upstream: &'static str, call: &'static str, started: Instant, outcome: &'static str) {
    metrics::counter!("tollgate_fulfillment_upstream_calls_total",
        "upstream" => upstream, "call" => call, "outcome" => outcome)
    .increment(1);
    metrics::histogram!("tollgate_fulfillment_upstream_duration_seconds",
        "upstream" => upstream, "call" => call)
    .record(started.elapsed().as_secs_f64());
}

/// A deadline passed: the call's own, or the connection attempt's (a server that
/// accepts but never speaks fails the next call with the connect timeout).
fn timed_out(status: &tonic::Status) -> bool {
    // tonic's own deadline ends a call as CANCELLED "Timeout expired".
    if status.code() == tonic::Code::DeadlineExceeded
        || (status.code() == tonic::Code::Cancelled && status.message().contains("Timeout"))
    {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tokio::time::error::Elapsed>() || error.to_string().contains("timed out") {
            return true;
        }
        source = error.source();
    }
    false
}

#[derive(Clone)]
pub struct Entitlements {
    client: EntitlementsClient<Channel>,
    health: HealthClient<Channel>,
    authorization: AsciiMetadataValue,
}

impl Entitlements {
    /// Connects lazily: fulfillment starts (and answers with fallbacks) while
    /// entitlements is still coming up.
    pub fn new(url: &str, token: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(url.to_string())?
            // Each call is bounded by its own deadline (`bounded`); a connection
            // attempt that hangs is abandoned after the same time, so the channel
            // retries rather than waiting forever.
            .connect_timeout(timeout)
            .connect_lazy();
        let authorization = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            anyhow::anyhow!("FULFILLMENT_ENTITLEMENTS_TOKEN is not a valid header value")
        })?;
        Ok(Self {
            client: EntitlementsClient::new(channel.clone()),
            health: HealthClient::new(channel),
            authorization,
        })
    }

    fn request<T>(&self, message: T, limit: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // The deadline travels as grpc-timeout, so entitlements stops waiting too.
        request.set_timeout(limit);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    async fn bounded<T>(
        call: &'static str,
        limit: Duration,
        future: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, UpstreamError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(limit, future).await {
            Err(_) => Err(UpstreamError::Timeout(limit)),
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if timed_out(&status) => Err(UpstreamError::Timeout(limit)),
            Ok(Err(status)) => Err(UpstreamError::Failed(format!(
                "entitlements {call}: {:?} {}",
                status.code(),
                status.message()
            ))),
        };
        let outcome = result
            .as_ref()
            .map_or_else(UpstreamError::outcome, |_| "ok");
        record("entitlements", call, started, outcome);
        result
    }

    pub async fn get(
        &self,
        subject: &str,
        deadline: Deadline,
    ) -> Result<pb::GetEntitlementsResponse, UpstreamError> {
        let limit = deadline.next_call();
        let request = self.request(
            pb::GetEntitlementsRequest {
                subject: subject.to_string(),
                at_least_version: 0,
            },
            limit,
        );
        Self::bounded(
            "GetEntitlements",
            limit,
            self.client.clone().get_entitlements(request),
        )
        .await
    }

    pub async fn check(
        &self,
        subject: &str,
        feature: &str,
        deadline: Deadline,
    ) -> Result<pb::CheckResponse, UpstreamError> {
        let limit = deadline.next_call();
        let request = self.request(
            pb::CheckRequest {
                subject: subject.to_string(),
                feature: feature.to_string(),
                at_least_version: 0,
            },
            limit,
        );
        Self::bounded("Check", limit, self.client.clone().check(request)).await
    }

    /// Whether entitlements reports its service SERVING (fresh answers).
    pub async fn ready(&self, limit: Duration) -> bool {
        let request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
            service: "tollgate.entitlements.v1.Entitlements".into(),
        });
        let answer = tokio::time::timeout(limit, self.health.clone().check(request)).await;
        matches!(answer, Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving)
    }
}

/// Billing's HTTP API: `POST /v1/checkout/sessions` and `POST /v1/portal/sessions`,
/// both answering 201 with the session's `url`.
#[derive(Clone)]
pub struct Billing {
    http: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Deserialize)]
struct SessionCreated {
    url: String,
}

impl Billing {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("tollgate-fulfillment/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: base.to_string(),
            token: token.to_string(),
        })
    }

    async fn create(
        &self,
        call: &'static str,
        path: &str,
        body: serde_json::Value,
        deadline: Deadline,
    ) -> Result<String, UpstreamError> {
        let limit = deadline.next_call();
        let started = Instant::now();
        let send = async {
            let response = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .json(&body)
                .send()
                .await
                .map_err(|e| UpstreamError::Failed(format!("billing {call}: {e}")))?;
            let status = response.status();
            if status != reqwest::StatusCode::CREATED {
                return Err(UpstreamError::Failed(format!(
                    "billing {call}: answered {status}"
                )));
            }
            let created: SessionCreated = response
                .json()
                .await
                .map_err(|e| UpstreamError::Failed(format!("billing {call}: {e}")))?;
            if !(created.url.starts_with("https://") || created.url.starts_with("http://")) {
                return Err(UpstreamError::Failed(format!(
                    "billing {call}: the answer has no link"
                )));
            }
            Ok(created.url)
        };
        let result = match tokio::time::timeout(limit, send).await {
            Err(_) => Err(UpstreamError::Timeout(limit)),
            Ok(result) => result,
        };
        let outcome = result
            .as_ref()
            .map_or_else(UpstreamError::outcome, |_| "ok");
        record("billing", call, started, outcome);
        result
    }

    pub async fn checkout(
        &self,
        user_id: &str,
        plan: &str,
        deadline: Deadline,
    ) -> Result<String, UpstreamError> {
        self.create(
            "checkout",
            "/v1/checkout/sessions",
            json!({ "kind": "subscription", "plan": plan, "user_id": user_id }),
            deadline,
        )
        .await
    }

    pub async fn portal(&self, user_id: &str, deadline: Deadline) -> Result<String, UpstreamError> {
        self.create(
            "portal",
            "/v1/portal/sessions",
            json!({ "user_id": user_id }),
            deadline,
        )
        .await
    }
}
