//! The gRPC service: authenticate, validate, decide from the cache, answer.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::Stream;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tollgate_plans::{Plans, Quota};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::Reason;
use tollgate_proto::entitlements::v1::entitlements_server::Entitlements;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::{Auth, Caller};
use crate::cache::{Cache, Lookup};
use crate::credits::{self, Credits, Op};
use crate::error::ApiError;
use crate::feed::Feed;
use crate::model::{Cached, ChangeMessage, CustomerState, Subject};
use crate::quotas::{Quotas, Recorded, Usage};
use crate::rules::{self, Access};
use crate::store;
use crate::test_users::{TestUserRule, TestUsers};

const MAX_FEATURE_LEN: usize = 200;
const MAX_BATCH_FEATURES: usize = 100;
const MAX_KEY_LEN: usize = 255;
const MAX_RESERVATION_TTL: Duration = Duration::from_secs(7 * 86_400);

pub struct State {
    pub plans: Arc<Plans>,
    pub enforcement: bool,
    pub pool: PgPool,
    pub cache: Arc<Cache>,
    pub feed: Arc<Feed>,
    pub test_users: TestUsers,
    pub quotas: Arc<Quotas>,
    pub credits: Credits,
    pub auth: Auth,
    pub max_wait: Duration,
    pub store_timeout: Duration,
    pub reservation_ttl: Duration,
    /// Becomes true at shutdown: open Watch streams end (clients resume).
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

#[derive(Clone)]
pub struct EntitlementsService {
    state: Arc<State>,
}

impl EntitlementsService {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

/// What is known about a subject for one call.
struct View {
    /// The deciding customer, if any.
    customer: Option<Arc<Cached>>,
    test_rule: Option<TestUserRule>,
    access: Access,
    /// The customer state could not be read: answers follow when_unavailable.
    unavailable: bool,
    /// Key of the subject's usage counters.
    owner: String,
    version: i64,
}

impl View {
    fn customer(&self) -> Option<&CustomerState> {
        self.customer.as_deref().map(|c| &c.state)
    }
}

enum Resolved {
    Known(Vec<Arc<Cached>>),
    Unknown,
    Unavailable,
}

/// The customer whose state decides for a subject with several (an email shared
/// by Stripe customers): a live one, the best tier, the most recent.
fn best(plans: &Plans, states: Vec<Arc<Cached>>) -> Option<Arc<Cached>> {
    let rank = |c: &Arc<Cached>| {
        let s = &c.state;
        (
            !s.deleted,
            matches!(s.access_status.as_str(), "active" | "trialing"),
            s.tier
                .as_deref()
                .and_then(|t| plans.tier(t))
                .map_or(0, |t| t.rank),
            s.customer_version,
        )
    };
    states.into_iter().max_by_key(rank)
}

fn feature_arg(feature: &str) -> Result<&str, ApiError> {
    let feature = feature.trim();
    if feature.is_empty() {
        return Err(ApiError::invalid("feature is required"));
    }
    if feature.len() > MAX_FEATURE_LEN || feature.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "feature must be at most 200 printable characters",
        ));
    }
    Ok(feature)
}

fn subject_arg(raw: &str) -> Result<Subject, ApiError> {
    Subject::parse(raw).map_err(ApiError::invalid)
}

fn key_arg(key: &str) -> Result<&str, ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "idempotency_key is required (1 to 255 printable characters)",
        ));
    }
    Ok(key)
}

fn amount_arg(amount: i64) -> Result<i64, ApiError> {
    if amount <= 0 {
        return Err(ApiError::invalid("amount must be greater than 0"));
    }
    Ok(amount)
}

fn reservation_arg(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id.trim())
        .map_err(|_| ApiError::invalid("reservation_id is not a reservation id"))
}

/// The caller's deadline (`grpc-timeout`), if it sent one.
fn grpc_deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn quota_message(quota: &Quota, usage: Option<Usage>) -> pb::Quota {
    let usage = usage.unwrap_or(Usage {
        daily: 0,
        monthly: 0,
    });
    pb::Quota {
        has_daily_limit: quota.daily.is_some(),
        daily_limit: quota.daily.unwrap_or(0),
        daily_used: usage.daily,
        has_monthly_limit: quota.monthly.is_some(),
        monthly_limit: quota.monthly.unwrap_or(0),
        monthly_used: usage.monthly,
    }
}

fn timestamp(at: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    }
}

/// One feature's answer.
struct Decision {
    allowed: bool,
    reason: Reason,
    degraded: bool,
    quota: Option<pb::Quota>,
}

impl State {
    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, ApiError> {
        Ok(self.auth.authenticate(request.metadata()).await?)
    }

    async fn fresh_enough<T>(&self, request: &Request<T>, version: i64) -> Result<(), ApiError> {
        if version <= 0 {
            return Ok(());
        }
        // Answer before the caller's own deadline passes, so it hears why.
        let wait = grpc_deadline(request).map_or(self.max_wait, |d| {
            d.saturating_sub((d / 10).max(Duration::from_millis(20)))
                .min(self.max_wait)
        });
        self.feed.wait_for(version, Instant::now() + wait).await?;
        Ok(())
    }

    async fn resolve(&self, subject: &Subject) -> Resolved {
        // A cache that cannot be confirmed fresh is bypassed, never trusted.
        if self.feed.is_fresh() {
            match self.cache.lookup(subject) {
                Lookup::Hit { found, reread } => {
                    metrics::counter!("tollgate_entitlements_cache_total", "result" => "hit")
                        .increment(1);
                    if reread {
                        self.reread_in_background(subject.clone());
                    }
                    return Resolved::Known(found);
                }
                Lookup::Unknown => {
                    metrics::counter!("tollgate_entitlements_cache_total", "result" => "hit")
                        .increment(1);
                    return Resolved::Unknown;
                }
                Lookup::Miss => {
                    metrics::counter!("tollgate_entitlements_cache_total", "result" => "miss")
                        .increment(1);
                }
            }
        } else {
            metrics::counter!("tollgate_entitlements_cache_total", "result" => "bypass")
                .increment(1);
        }
        // While PostgreSQL is away the pool keeps retrying for its acquire timeout;
        // the caller is owed its feature's policy long before that.
        match tokio::time::timeout(self.store_timeout, store::customers_of(&self.pool, subject))
            .await
        {
            Ok(Ok(states)) => {
                let held = self.cache.insert_loaded(subject, states);
                if held.is_empty() {
                    Resolved::Unknown
                } else {
                    Resolved::Known(held)
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read customer state; answering degraded");
                Resolved::Unavailable
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = self.store_timeout.as_millis() as u64,
                    "customer state not read in time; answering degraded"
                );
                Resolved::Unavailable
            }
        }
    }

    /// Reads `subject`'s customers again off the request path (`Lookup::Hit::reread`);
    /// what it finds replaces the held state unless the feed has brought a newer one.
    fn reread_in_background(&self, subject: Subject) {
        let (pool, cache, timeout) = (self.pool.clone(), self.cache.clone(), self.store_timeout);
        tokio::spawn(async move {
            let outcome = match tokio::time::timeout(timeout, store::customers_of(&pool, &subject))
                .await
            {
                Ok(Ok(states)) => {
                    cache.insert_loaded(&subject, states);
                    "ok"
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "background re-read failed; the state expires as usual");
                    "error"
                }
                Err(_) => "timeout",
            };
            metrics::counter!("tollgate_entitlements_cache_refreshes_total", "outcome" => outcome)
                .increment(1);
        });
    }

    async fn view(&self, subject: &Subject) -> View {
        let version = self.feed.watermark();
        let (customer, unavailable) = match self.resolve(subject).await {
            Resolved::Known(states) => (best(&self.plans, states), false),
            Resolved::Unknown => (None, false),
            Resolved::Unavailable => (None, true),
        };
        let now = Utc::now();
        let state = customer.as_deref().map(|c| &c.state);
        let test_rule = self.test_users.matching(subject, state, now);
        let access = Access::new(
            &self.plans,
            self.enforcement,
            state,
            test_rule.as_ref(),
            now,
        );
        let owner = match state {
            Some(c) => c.customer_id.to_string(),
            None => format!("subject:{}", subject.key()),
        };
        // A test user needs no customer state: not degraded.
        let unavailable = unavailable && !access.test_user;
        View {
            customer,
            test_rule,
            access,
            unavailable,
            owner,
            version,
        }
    }

    async fn decide(&self, view: &View, feature: &str) -> Decision {
        if view.unavailable {
            let (allowed, reason) = rules::degraded(&self.plans, self.enforcement, feature);
            return Decision {
                allowed,
                reason,
                degraded: true,
                quota: None,
            };
        }
        let (allowed, reason) = view.access.decide(&self.plans, feature);
        let quota = view.access.quota(&self.plans, feature);
        let (Some(quota), true, true) = (quota, allowed, self.enforcement) else {
            return Decision {
                allowed,
                reason,
                degraded: false,
                quota: quota.map(|q| quota_message(q, None)),
            };
        };
        match self.quotas.usage(&view.owner, feature, quota).await {
            Ok(usage) if usage.exhausted(quota) => Decision {
                allowed: false,
                reason: Reason::QuotaExhausted,
                degraded: false,
                quota: Some(quota_message(quota, Some(usage))),
            },
            Ok(usage) => Decision {
                allowed,
                reason,
                degraded: false,
                quota: Some(quota_message(quota, Some(usage))),
            },
            Err(e) => {
                tracing::warn!(error = %e, "usage counters unavailable; answering degraded");
                let (allowed, reason) = rules::degraded(&self.plans, self.enforcement, feature);
                Decision {
                    allowed,
                    reason,
                    degraded: true,
                    quota: Some(quota_message(quota, None)),
                }
            }
        }
    }

    fn status_of(&self, view: &View) -> String {
        if view.unavailable {
            "unavailable".into()
        } else {
            view.access.status.clone()
        }
    }

    /// The customer a credit operation is for, or the answer to give without one.
    async fn credit_customer(&self, subject: &Subject) -> Result<Option<Uuid>, ApiError> {
        match self.resolve(subject).await {
            Resolved::Known(states) => Ok(best(&self.plans, states).map(|c| c.state.customer_id)),
            Resolved::Unknown => Ok(None),
            Resolved::Unavailable => Err(ApiError::Unavailable("customer state".into())),
        }
    }

    async fn credit_op(&self, op: Op) -> Result<credits::Outcome, ApiError> {
        let started = Instant::now();
        let outcome = self.credits.submit(op).await;
        metrics::histogram!("tollgate_entitlements_credit_seconds").record(started.elapsed());
        Ok(outcome?)
    }
}

fn credit_reason(status: credits::Status) -> Reason {
    match status {
        credits::Status::Ok => Reason::Ok,
        credits::Status::InsufficientCredits => Reason::InsufficientCredits,
        credits::Status::ReservationClosed => Reason::ReservationClosed,
    }
}

fn change_message(change: &ChangeMessage) -> pb::EntitlementChange {
    pb::EntitlementChange {
        version: change.version,
        customer_version: change.customer_version,
        customer_id: change.customer_id.to_string(),
        user_id: change.user_id.clone().unwrap_or_default(),
        stripe_customer_id: change.stripe_customer_id.clone().unwrap_or_default(),
        status: change.access_status.clone(),
        tier: change.tier.clone().unwrap_or_default(),
        stripe_features: change.stripe_features.clone(),
        test_user: change.test_user,
        deleted: change.deleted,
        change: change.reason.clone(),
    }
}

/// Runs an RPC body in a span, timing it and mapping its error once.
async fn rpc<T>(
    name: &'static str,
    body: impl Future<Output = Result<T, ApiError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let span = tracing::info_span!("rpc", rpc = name, otel.kind = "server");
    let result = body.instrument(span).await;
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::histogram!("tollgate_entitlements_rpc_seconds", "rpc" => name, "outcome" => outcome)
        .record(started.elapsed());
    result.map(Response::new).map_err(Status::from)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::EntitlementChange, Status>> + Send>>;

#[tonic::async_trait]
impl Entitlements for EntitlementsService {
    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let s = &self.state;
        rpc("Check", async {
            let caller = s.caller(&request).await?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let feature = feature_arg(&req.feature)?;
            caller.may_ask_about(&subject)?;
            s.fresh_enough(&request, req.at_least_version).await?;
            let view = s.view(&subject).await;
            let decision = s.decide(&view, feature).await;
            metrics::counter!("tollgate_entitlements_checks_total", "allowed" => if decision.allowed { "true" } else { "false" })
                .increment(1);
            Ok(pb::CheckResponse {
                allowed: decision.allowed,
                reason: decision.reason.into(),
                tier: view.access.tier.clone(),
                status: s.status_of(&view),
                test_user: view.access.test_user,
                version: view.version,
                degraded: decision.degraded,
                quota: decision.quota,
            })
        })
        .await
    }

    async fn check_batch(
        &self,
        request: Request<pb::CheckBatchRequest>,
    ) -> Result<Response<pb::CheckBatchResponse>, Status> {
        let s = &self.state;
        rpc("CheckBatch", async {
            let caller = s.caller(&request).await?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            if req.features.is_empty() || req.features.len() > MAX_BATCH_FEATURES {
                return Err(ApiError::invalid("features must list 1 to 100 features"));
            }
            let features = req
                .features
                .iter()
                .map(|f| feature_arg(f))
                .collect::<Result<Vec<_>, _>>()?;
            caller.may_ask_about(&subject)?;
            s.fresh_enough(&request, req.at_least_version).await?;
            let view = s.view(&subject).await;
            let mut decisions = Vec::with_capacity(features.len());
            let mut degraded = false;
            for feature in features {
                let d = s.decide(&view, feature).await;
                degraded |= d.degraded;
                decisions.push(pb::FeatureDecision {
                    feature: feature.to_string(),
                    allowed: d.allowed,
                    reason: d.reason.into(),
                    degraded: d.degraded,
                    quota: d.quota,
                });
            }
            Ok(pb::CheckBatchResponse {
                decisions,
                tier: view.access.tier.clone(),
                status: s.status_of(&view),
                test_user: view.access.test_user,
                version: view.version,
                degraded,
            })
        })
        .await
    }

    async fn get_entitlements(
        &self,
        request: Request<pb::GetEntitlementsRequest>,
    ) -> Result<Response<pb::GetEntitlementsResponse>, Status> {
        let s = &self.state;
        rpc("GetEntitlements", async {
            let caller = s.caller(&request).await?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            caller.may_ask_about(&subject)?;
            s.fresh_enough(&request, req.at_least_version).await?;
            let view = s.view(&subject).await;
            let mut degraded = view.unavailable;
            let (credit_balance, subscription) = match view.customer() {
                Some(customer) => {
                    let balance = store::credit_balance(&s.pool, customer.customer_id).await;
                    let subscription = store::subscription(&s.pool, customer.customer_id).await;
                    degraded |= balance.is_err() || subscription.is_err();
                    (balance.unwrap_or(0), subscription.ok().flatten())
                }
                None => (0, None),
            };
            let mut quotas = Vec::new();
            if let Some(resolved) = s.plans.resolved(&view.access.tier) {
                for (feature, quota) in &resolved.quotas {
                    if quota.daily.is_none() && quota.monthly.is_none() {
                        continue;
                    }
                    let usage = s.quotas.usage(&view.owner, feature, quota).await;
                    degraded |= usage.is_err();
                    quotas.push(pb::FeatureQuota {
                        feature: feature.clone(),
                        quota: Some(quota_message(quota, usage.ok())),
                    });
                }
            }
            let subscription = subscription.map(|sub| {
                let payment_status = match (
                    sub.latest_invoice_status.as_deref(),
                    sub.latest_invoice_attempted,
                ) {
                    (Some("paid"), _) => "paid",
                    (Some("open"), Some(true)) => "failed",
                    (Some(other), _) => other,
                    (None, _) => "none",
                }
                .to_string();
                let ends = sub.cancel_at_period_end || sub.ended_at.is_some();
                pb::SubscriptionSummary {
                    subscription_id: sub.stripe_subscription_id.clone(),
                    plan: sub
                        .price_id
                        .as_deref()
                        .and_then(|p| s.plans.price(p))
                        .map(|p| p.plan.clone())
                        .or(sub.plan.clone())
                        .unwrap_or_default(),
                    tier: sub.tier.clone(),
                    status: sub.status.clone(),
                    billing_interval: sub.billing_interval.clone().unwrap_or_default(),
                    payment_status,
                    current_period_end: sub.current_period_end.map(timestamp),
                    cancel_at_period_end: sub.cancel_at_period_end,
                    next_billing_date: if ends {
                        None
                    } else {
                        sub.current_period_end.map(timestamp)
                    },
                    last_payment_date: sub.last_paid_at.map(timestamp),
                }
            });
            let test_user_until = view.test_rule.as_ref().map(|r| r.expires_at).or_else(|| {
                view.customer()
                    .filter(|c| c.flagged_test_user(Utc::now()))
                    .and_then(|c| c.test_user_until)
            });
            Ok(pb::GetEntitlementsResponse {
                known: view.customer.is_some(),
                user_id: view
                    .customer()
                    .and_then(|c| c.user_id.clone())
                    .unwrap_or_default(),
                tier: view.access.tier.clone(),
                tier_name: s
                    .plans
                    .tier(&view.access.tier)
                    .map(|t| t.name.clone())
                    .unwrap_or_default(),
                status: s.status_of(&view),
                features: if view.unavailable {
                    Vec::new()
                } else {
                    view.access.features(&s.plans).into_iter().collect()
                },
                stripe_features: view
                    .customer()
                    .map(|c| c.stripe_features.clone())
                    .unwrap_or_default(),
                credit_balance,
                quotas,
                subscription,
                test_user: view.access.test_user,
                test_user_until: test_user_until.map(timestamp),
                version: view.version,
                customer_version: view.customer().map_or(0, |c| c.customer_version),
                degraded,
                enforcement_enabled: s.enforcement,
            })
        })
        .await
    }

    async fn consume_credits(
        &self,
        request: Request<pb::ConsumeCreditsRequest>,
    ) -> Result<Response<pb::ConsumeCreditsResponse>, Status> {
        let s = &self.state;
        rpc("ConsumeCredits", async {
            let caller = s.caller(&request).await?;
            caller.must_be_service("ConsumeCredits")?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let amount = amount_arg(req.amount)?;
            let key = key_arg(&req.idempotency_key)?;
            let Some(customer_id) = s.credit_customer(&subject).await? else {
                return Ok(pb::ConsumeCreditsResponse {
                    ok: false,
                    reason: Reason::UnknownSubject.into(),
                    remaining: 0,
                    replayed: false,
                });
            };
            let outcome = s
                .credit_op(Op::Consume {
                    customer_id,
                    amount,
                    key: key.to_string(),
                })
                .await?;
            Ok(pb::ConsumeCreditsResponse {
                ok: outcome.status == credits::Status::Ok,
                reason: credit_reason(outcome.status).into(),
                remaining: outcome.remaining,
                replayed: outcome.replayed,
            })
        })
        .await
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let s = &self.state;
        rpc("Reserve", async {
            let caller = s.caller(&request).await?;
            caller.must_be_service("Reserve")?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let amount = amount_arg(req.amount)?;
            let key = key_arg(&req.idempotency_key)?;
            let ttl = match req.ttl_seconds {
                0 => s.reservation_ttl,
                n => Duration::from_secs(u64::from(n)),
            };
            if ttl > MAX_RESERVATION_TTL {
                return Err(ApiError::invalid("ttl_seconds must be at most 7 days"));
            }
            let Some(customer_id) = s.credit_customer(&subject).await? else {
                return Ok(pb::ReserveResponse {
                    ok: false,
                    reason: Reason::UnknownSubject.into(),
                    ..Default::default()
                });
            };
            let outcome = s
                .credit_op(Op::Reserve {
                    customer_id,
                    amount,
                    key: key.to_string(),
                    ttl,
                })
                .await?;
            Ok(pb::ReserveResponse {
                ok: outcome.status == credits::Status::Ok,
                reason: credit_reason(outcome.status).into(),
                reservation_id: outcome
                    .reservation_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                remaining: outcome.remaining,
                expires_at: outcome.expires_at.map(timestamp),
                replayed: outcome.replayed,
            })
        })
        .await
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        let s = &self.state;
        rpc("Settle", async {
            let caller = s.caller(&request).await?;
            caller.must_be_service("Settle")?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let reservation_id = reservation_arg(&req.reservation_id)?;
            if req.amount < 0 {
                return Err(ApiError::invalid("amount must be 0 or more"));
            }
            let customer_id = s
                .credit_customer(&subject)
                .await?
                .ok_or(crate::credits::CreditError::NoSuchReservation)?;
            let outcome = s
                .credit_op(Op::Settle {
                    customer_id,
                    reservation_id,
                    amount: req.amount,
                })
                .await?;
            Ok(pb::SettleResponse {
                ok: outcome.status == credits::Status::Ok,
                reason: credit_reason(outcome.status).into(),
                remaining: outcome.remaining,
                replayed: outcome.replayed,
            })
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let s = &self.state;
        rpc("Release", async {
            let caller = s.caller(&request).await?;
            caller.must_be_service("Release")?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let reservation_id = reservation_arg(&req.reservation_id)?;
            let customer_id = s
                .credit_customer(&subject)
                .await?
                .ok_or(crate::credits::CreditError::NoSuchReservation)?;
            let outcome = s
                .credit_op(Op::Release {
                    customer_id,
                    reservation_id,
                    expired: false,
                })
                .await?;
            Ok(pb::ReleaseResponse {
                ok: outcome.status == credits::Status::Ok,
                reason: credit_reason(outcome.status).into(),
                remaining: outcome.remaining,
                replayed: outcome.replayed,
            })
        })
        .await
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let s = &self.state;
        rpc("RecordUsage", async {
            let caller = s.caller(&request).await?;
            caller.must_be_service("RecordUsage")?;
            let req = request.get_ref();
            let subject = subject_arg(&req.subject)?;
            let feature = feature_arg(&req.feature)?;
            let amount = req.amount.max(1);
            let key = match req.idempotency_key.as_str() {
                "" => None,
                k => Some(key_arg(k)?),
            };
            let view = s.view(&subject).await;
            if view.unavailable {
                let (allowed, reason) = rules::degraded(&s.plans, s.enforcement, feature);
                return Ok(pb::RecordUsageResponse {
                    allowed,
                    reason: reason.into(),
                    quota: None,
                    degraded: true,
                    replayed: false,
                });
            }
            let (allowed, reason) = view.access.decide(&s.plans, feature);
            let Some(quota) = view.access.quota(&s.plans, feature).filter(|_| allowed) else {
                // Denied, or no quota to count against.
                return Ok(pb::RecordUsageResponse {
                    allowed,
                    reason: reason.into(),
                    quota: None,
                    degraded: false,
                    replayed: false,
                });
            };
            let quota = if s.enforcement {
                *quota
            } else {
                Quota::default()
            };
            match s
                .quotas
                .record(&view.owner, feature, amount, &quota, key)
                .await
            {
                Ok(Recorded::Counted(usage)) => Ok(pb::RecordUsageResponse {
                    allowed: true,
                    reason: reason.into(),
                    quota: Some(quota_message(&quota, Some(usage))),
                    degraded: false,
                    replayed: false,
                }),
                Ok(Recorded::Replayed(usage)) => Ok(pb::RecordUsageResponse {
                    allowed: true,
                    reason: reason.into(),
                    quota: Some(quota_message(&quota, Some(usage))),
                    degraded: false,
                    replayed: true,
                }),
                Ok(Recorded::Refused(usage)) => Ok(pb::RecordUsageResponse {
                    allowed: false,
                    reason: Reason::QuotaExhausted.into(),
                    quota: Some(quota_message(&quota, Some(usage))),
                    degraded: false,
                    replayed: false,
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "usage counters unavailable; answering degraded");
                    let (allowed, reason) = rules::degraded(&s.plans, s.enforcement, feature);
                    Ok(pb::RecordUsageResponse {
                        allowed,
                        reason: reason.into(),
                        quota: Some(quota_message(&quota, None)),
                        degraded: true,
                        replayed: false,
                    })
                }
            }
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let s = self.state.clone();
        rpc("Watch", async move {
            let caller = s.caller(&request).await?;
            let req = request.into_inner();
            if req.from_version < 0 {
                return Err(ApiError::invalid("from_version must be 0 or more"));
            }
            let filter = if req.subject.trim().is_empty() {
                caller.must_be_service("Watch of every subject")?;
                None
            } else {
                let subject = subject_arg(&req.subject)?;
                caller.may_ask_about(&subject)?;
                let ids: Vec<Uuid> = match s.resolve(&subject).await {
                    Resolved::Known(states) => states.iter().map(|c| c.state.customer_id).collect(),
                    Resolved::Unknown => Vec::new(),
                    Resolved::Unavailable => {
                        return Err(ApiError::Unavailable("customer state".into()));
                    }
                };
                Some(WatchFilter { subject, ids })
            };
            let (live, watermark) = s.feed.subscribe();
            let (tx, rx) = mpsc::channel(256);
            tokio::spawn(stream_changes(
                s.clone(),
                filter,
                req.from_version,
                live,
                watermark,
                tx,
            ));
            let stream: WatchStream =
                Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|item| (item, rx))
                }));
            Ok(stream)
        })
        .await
    }
}

struct WatchFilter {
    subject: Subject,
    ids: Vec<Uuid>,
}

impl WatchFilter {
    fn matches(&self, change: &ChangeMessage) -> bool {
        self.ids.contains(&change.customer_id)
            || matches!(&self.subject, Subject::UserId(id) if change.user_id.as_deref() == Some(id.as_str()))
    }
}

/// Replays committed changes after `from` (up to the watermark at subscription),
/// then forwards live ones; ends when the client goes away.
async fn stream_changes(
    s: Arc<State>,
    filter: Option<WatchFilter>,
    from: i64,
    mut live: broadcast::Receiver<Arc<ChangeMessage>>,
    watermark: i64,
    tx: mpsc::Sender<Result<pb::EntitlementChange, Status>>,
) {
    let wanted = |c: &ChangeMessage| filter.as_ref().is_none_or(|f| f.matches(c));
    let mut stopping = s.stopping.clone();
    let mut sent = if from > 0 { from } else { watermark };
    if from > 0 && from < watermark {
        let mut after = from;
        loop {
            match store::changes_after(&s.pool, after, Some(watermark), 500).await {
                Ok(changes) => {
                    let n = changes.len();
                    for change in changes {
                        after = change.version;
                        if wanted(&change) && tx.send(Ok(change_message(&change))).await.is_err() {
                            return;
                        }
                    }
                    if n < 500 {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watch replay failed");
                    let _ = tx
                        .send(Err(Status::unavailable(format!(
                            "cannot replay changes; resume from version {after}"
                        ))))
                        .await;
                    return;
                }
            }
        }
        sent = watermark;
    }
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(change) => {
                    if change.version <= sent {
                        continue;
                    }
                    sent = change.version;
                    if wanted(&change) && tx.send(Ok(change_message(&change))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Err(Status::aborted(format!(
                        "watcher fell behind; resume with from_version = {sent}"
                    )))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            () = tx.closed() => return,
            _ = async { stopping.wait_for(|stop| *stop).await.map(|_| ()) } => {
                let _ = tx.send(Err(Status::unavailable(format!(
                    "server shutting down; resume with from_version = {sent}"
                )))).await;
                return;
            }
        }
    }
}
