//! `GET /v1/billing/status`, `GET /v1/verify-payment/{email}` and `GET /v1/user-auth`:
//! what a user has, computed from billing's PostgreSQL state and the plans file.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use tollgate_plans::Plans;

use super::errors::ApiError;
use super::{ApiState, Caller};

/// Statuses that grant access (billing's derived `access_status`).
const GRANTING: &[&str] = &["active", "trialing"];
/// Subscription statuses that still bill or may bill again.
const LIVE: &[&str] = &["active", "trialing", "past_due", "unpaid", "paused"];

#[derive(Debug, Serialize)]
pub struct Credits {
    /// Credits available now.
    pub balance: i64,
    /// Credits spent (consumed, or held for an operation in progress).
    pub used: i64,
    /// Credits granted in all (packs bought and operator adjustments, less refunds):
    /// `balance = limit - used`.
    pub limit: i64,
}

#[derive(Debug, Serialize)]
pub struct Subscription {
    pub id: String,
    /// The plan key a checkout sells (`pro_monthly`), when the plans file sells it.
    pub plan: Option<String>,
    pub plan_name: Option<String>,
    pub status: String,
    /// `month`, `year`, ...
    pub billing_cycle: Option<String>,
    /// `paid`, `failed`, `pending` or `none` (from the latest invoice).
    pub payment_status: &'static str,
    pub cancel_at_period_end: bool,
    pub current_period_end: Option<DateTime<Utc>>,
    /// When the next invoice is due; null when it will not renew.
    pub next_billing_date: Option<DateTime<Utc>>,
}

/// The body of `GET /v1/billing/status`.
#[derive(Debug, Serialize)]
pub struct BillingStatus {
    pub user_id: String,
    pub tier: String,
    pub tier_name: String,
    /// Billing's derived access status: `active`, `trialing`, `payment_failed`,
    /// `past_due`, `canceled`, `none`, ... (`deleted` for a deleted customer).
    pub status: String,
    #[serde(rename = "hasAccess")]
    pub has_access: bool,
    pub test_user: bool,
    pub credits: Credits,
    pub subscription: Option<Subscription>,
    pub last_payment_date: Option<DateTime<Utc>>,
    /// Whether billing knows this user at all (a customer row).
    #[serde(skip)]
    pub known: bool,
    #[serde(skip)]
    pub paying: bool,
}

#[derive(sqlx::FromRow)]
struct CustomerRow {
    id: uuid::Uuid,
    email: Option<String>,
    stripe_customer_id: Option<String>,
    access_status: String,
    tier: Option<String>,
    test_user: bool,
    test_user_until: Option<DateTime<Utc>>,
    deleted: bool,
}

#[derive(sqlx::FromRow)]
struct SubscriptionRow {
    stripe_subscription_id: String,
    status: String,
    price_id: Option<String>,
    billing_interval: Option<String>,
    current_period_end: Option<DateTime<Utc>>,
    cancel_at_period_end: bool,
    invoice_status: Option<String>,
    invoice_attempted: Option<bool>,
    invoice_remaining: Option<i64>,
}

/// The active test-user rule (`tollgate test-users`) matching the user or their email:
/// its tier (None: the plans file's top tier).
async fn test_rule(
    pool: &PgPool,
    user_id: &str,
    email: Option<&str>,
) -> Result<Option<Option<String>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT tier FROM test_users
          WHERE revoked_at IS NULL AND expires_at > now()
            AND ((kind = 'user_id' AND value = $1)
              OR (kind = 'email' AND value = lower($2))
              OR (kind = 'email_domain' AND $2 IS NOT NULL AND (
                     split_part(lower($2), '@', 2) = value
                  OR (value LIKE '*.%'
                      AND length(split_part(lower($2), '@', 2)) > length(value) - 1
                      AND right(split_part(lower($2), '@', 2), length(value) - 1) = substr(value, 2)))))
          ORDER BY id LIMIT 1",
    )
    .bind(user_id)
    .bind(email)
    .fetch_optional(pool)
    .await
}

/// A user's billing status. `email` is the caller's verified email (test-user rules by
/// email match it when billing has none stored).
pub async fn load(
    pool: &PgPool,
    plans: &Plans,
    user_id: &str,
    email: Option<&str>,
) -> Result<BillingStatus, ApiError> {
    let customer: Option<CustomerRow> = sqlx::query_as(
        "SELECT id, email, stripe_customer_id, access_status, tier, test_user, test_user_until,
                deleted_at IS NOT NULL AS deleted
           FROM customers WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(pool)
    .await?;
    let now = Utc::now();
    let email = customer
        .as_ref()
        .and_then(|c| c.email.clone())
        .or_else(|| email.map(str::to_string));
    let rule = test_rule(pool, user_id, email.as_deref()).await?;
    let flagged = customer.as_ref().is_some_and(|c| {
        !c.deleted && c.test_user && c.test_user_until.is_none_or(|until| until > now)
    });
    let test_user = flagged || rule.is_some();
    let (status, paying) = match &customer {
        Some(c) if c.deleted => ("deleted".to_string(), false),
        Some(c) => (
            c.access_status.clone(),
            GRANTING.contains(&c.access_status.as_str()),
        ),
        None => ("none".to_string(), false),
    };
    let tier = if test_user {
        rule.flatten()
            .filter(|t| plans.tier(t).is_some())
            .unwrap_or_else(|| plans.top_tier().to_string())
    } else {
        customer
            .as_ref()
            .filter(|c| !c.deleted)
            .and_then(|c| c.tier.clone())
            .filter(|t| plans.tier(t).is_some())
            .unwrap_or_else(|| plans.default_tier().to_string())
    };
    let tier_name = plans
        .tier(&tier)
        .map_or_else(|| tier.clone(), |t| t.name.clone());
    let mut result = BillingStatus {
        user_id: user_id.to_string(),
        tier,
        tier_name,
        status,
        has_access: paying || test_user,
        test_user,
        credits: Credits {
            balance: 0,
            used: 0,
            limit: 0,
        },
        subscription: None,
        last_payment_date: None,
        known: customer.as_ref().is_some_and(|c| !c.deleted),
        paying,
    };
    let Some(customer) = customer else {
        return Ok(result);
    };
    let (balance, used, limit): (i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE((SELECT balance FROM credit_balances WHERE customer_id = $1), 0),
                COALESCE(sum(-delta) FILTER (WHERE reason IN ('consume', 'reserve', 'release', 'settle')), 0)::bigint,
                COALESCE(sum(delta) FILTER (WHERE reason IN ('topup', 'refund_clawback', 'admin_adjustment')), 0)::bigint
           FROM credit_ledger WHERE customer_id = $1",
    )
    .bind(customer.id)
    .fetch_one(pool)
    .await?;
    result.credits = Credits {
        balance,
        used,
        limit,
    };
    result.last_payment_date = sqlx::query_scalar(
        "SELECT max(at) FROM (
             SELECT paid_at AS at FROM invoices WHERE stripe_customer_id = $1 AND status = 'paid'
             UNION ALL
             SELECT occurred_at FROM transactions
              WHERE customer_id = $2 AND status = 'succeeded'
                AND kind IN ('subscription_payment', 'upgrade', 'credit_topup')) payments",
    )
    .bind(&customer.stripe_customer_id)
    .bind(customer.id)
    .fetch_one(pool)
    .await?;
    let Some(stripe_customer_id) = &customer.stripe_customer_id else {
        return Ok(result);
    };
    // The subscription that matters: a live one first, then the latest to end.
    let subscription: Option<SubscriptionRow> = sqlx::query_as(
        "SELECT s.stripe_subscription_id, s.status, s.price_id, s.billing_interval,
                s.current_period_end, s.cancel_at_period_end,
                i.status AS invoice_status, i.attempted AS invoice_attempted,
                i.amount_remaining AS invoice_remaining
           FROM subscriptions s
           LEFT JOIN LATERAL (
               SELECT status, attempted, amount_remaining FROM invoices
                WHERE stripe_subscription_id = s.stripe_subscription_id
                ORDER BY invoice_created DESC LIMIT 1) i ON true
          WHERE s.stripe_customer_id = $1
          ORDER BY s.status = ANY($2) DESC, s.current_period_end DESC NULLS LAST,
                   s.stripe_subscription_id
          LIMIT 1",
    )
    .bind(stripe_customer_id)
    .bind(LIVE)
    .fetch_optional(pool)
    .await?;
    result.subscription = subscription.map(|s| {
        let price = s.price_id.as_deref().and_then(|id| plans.price(id));
        let payment_status = match (s.invoice_status.as_deref(), s.invoice_attempted) {
            _ if customer.access_status == "payment_failed" => "failed",
            (Some("paid"), _) => "paid",
            (Some("open"), Some(true)) if s.invoice_remaining.unwrap_or(0) > 0 => "failed",
            (Some("uncollectible"), _) => "failed",
            (Some("open" | "draft"), _) => "pending",
            _ => "none",
        };
        let renews = ["active", "trialing", "past_due"].contains(&s.status.as_str())
            && !s.cancel_at_period_end;
        Subscription {
            id: s.stripe_subscription_id,
            plan: price.and_then(|p| p.key.clone()),
            plan_name: price.map(|p| p.plan.clone()),
            status: s.status,
            billing_cycle: s.billing_interval,
            payment_status,
            cancel_at_period_end: s.cancel_at_period_end,
            current_period_end: s.current_period_end,
            next_billing_date: s.current_period_end.filter(|_| renews),
        }
    });
    Ok(result)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    user_id: Option<String>,
}

pub async fn status(
    caller: Caller,
    query: web::Query<UserQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let user_id = caller.subject(query.user_id.as_deref())?;
    let email = match &caller {
        Caller::User { email, .. } => email.as_deref(),
        _ => None,
    };
    let status = load(&state.pool, &state.plans, &user_id, email).await?;
    Ok(HttpResponse::Ok().json(status))
}

fn valid_email(email: &str) -> bool {
    email.len() <= 320
        && !email.chars().any(|c| c.is_control() || c.is_whitespace())
        && email
            .rsplit_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
}

/// Whether the email has paid access (service callers only). The email never reaches the
/// log; the answer says whether it is paying, and whether it has access at all (a test
/// user has access without paying).
pub async fn verify_payment(
    caller: Caller,
    email: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    caller.require_service()?;
    let email = email.into_inner().trim().to_lowercase();
    if !valid_email(&email) {
        return Err(ApiError::invalid("the path must end in an email address"));
    }
    // The customers with this email, the one with the best access first.
    let user_ids: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT user_id FROM customers WHERE lower(email) = $1 AND deleted_at IS NULL
          ORDER BY access_status = ANY($2) DESC, updated_at DESC LIMIT 5",
    )
    .bind(&email)
    .bind(GRANTING)
    .fetch_all(&state.pool)
    .await?;
    let mut best: Option<BillingStatus> = None;
    for user_id in user_ids.into_iter().flatten() {
        let status = load(&state.pool, &state.plans, &user_id, Some(&email)).await?;
        if best
            .as_ref()
            .is_none_or(|b| (status.paying, status.has_access) > (b.paying, b.has_access))
        {
            best = Some(status);
        }
    }
    let body = match best {
        Some(s) => json!({
            "email": email, "known": true, "paid": s.paying, "hasAccess": s.has_access,
            "status": s.status, "tier": s.tier, "test_user": s.test_user, "user_id": s.user_id,
        }),
        None => {
            // Unknown to billing: only a test-user rule on the email can grant.
            let rule = test_rule(&state.pool, "", Some(&email)).await?;
            let tier = match &rule {
                Some(tier) => tier
                    .clone()
                    .filter(|t| state.plans.tier(t).is_some())
                    .unwrap_or_else(|| state.plans.top_tier().to_string()),
                None => state.plans.default_tier().to_string(),
            };
            json!({
                "email": email, "known": false, "paid": false, "hasAccess": rule.is_some(),
                "status": "none", "tier": tier, "test_user": rule.is_some(), "user_id": null,
            })
        }
    };
    Ok(HttpResponse::Ok().json(body))
}

/// Who the caller is. For a user's JWT: their id, email and role — `paid` (has access:
/// a paying subscription, or a test user), `subscriber` (known to billing, no access
/// now), `visitor` (unknown to billing).
pub async fn user_auth(
    caller: Caller,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let body = match &caller {
        Caller::User { user_id, email } => {
            let status = load(&state.pool, &state.plans, user_id, email.as_deref()).await?;
            let role = if status.has_access {
                "paid"
            } else if status.known {
                "subscriber"
            } else {
                "visitor"
            };
            json!({
                "authenticated": true, "kind": "user", "user_id": user_id, "email": email,
                "role": role, "tier": status.tier, "hasAccess": status.has_access,
                "test_user": status.test_user,
            })
        }
        Caller::Service { name } | Caller::Admin { name } => json!({
            "authenticated": true, "kind": caller.kind(), "name": name,
            "admin": matches!(caller, Caller::Admin { .. }),
        }),
    };
    Ok(HttpResponse::Ok().json(body))
}
