//! `/v1/admin/...`: what `tollgate` does for operators, over HTTP, for admin tokens only
//! (`BILLING_API_ADMIN_TOKENS`). The admin's id in the audit log is the token's name.

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::body::{PageQuery, read_json};
use super::errors::ApiError;
use super::reads::transactions_page;
use super::{ApiState, Caller};
use crate::admin::{self as actions, CreditAdjustment, TestUserFlag};
use crate::dead_letters;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Resolved ones too (default: open only).
    #[serde(default)]
    all: bool,
}

/// Dead letters, oldest first (the payload is left out: `tollgate dead-letters show`).
pub async fn dead_letters(
    caller: Caller,
    query: web::Query<DeadLetterQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    let letters = dead_letters::list(&state.pool, query.all).await?;
    let data: Vec<_> = letters
        .into_iter()
        .map(|l| {
            json!({
                "id": l.id, "event_id": l.event_id, "event_type": l.event_type,
                "routing_key": l.routing_key, "error": l.error, "attempts": l.attempts,
                "resolution": l.resolution, "created_at": l.created_at,
                "resolved_at": l.resolved_at, "resolved_by": l.resolved_by,
                "payload_bytes": l.payload.len(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "data": data })))
}

/// Puts a dead letter back on the billing queue (after its cause was fixed).
pub async fn replay(
    caller: Caller,
    id: web::Path<i64>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let admin = caller.require_admin()?;
    let id = id.into_inner();
    dead_letters::replay(&state.pool, &state.amqp_url, id, admin).await?;
    tracing::info!(dead_letter = id, admin, "dead letter replayed by an admin");
    Ok(
        HttpResponse::Ok()
            .json(json!({ "id": id, "resolution": "replayed", "resolved_by": admin })),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustmentBody {
    user_id: String,
    delta: i64,
    reason: String,
    idempotency_key: String,
}

/// Adds or removes credits through the credit ledger, once per idempotency key.
pub async fn adjust_credits(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let admin = caller.require_admin()?;
    let body: AdjustmentBody = read_json(&req, payload).await?;
    super::auth::validate_user_id(&body.user_id)?;
    let adjusted = actions::adjust_credits(
        &state.pool,
        CreditAdjustment {
            user_id: &body.user_id,
            delta: body.delta,
            reason: &body.reason,
            idempotency_key: &body.idempotency_key,
            admin_id: admin,
        },
    )
    .await?;
    let mut response = if adjusted.applied {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(response.json(json!({
        "user_id": body.user_id, "delta": body.delta, "applied": adjusted.applied,
        "balance": adjusted.balance,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagBody {
    reason: String,
    /// RFC 3339; absent: until unflagged.
    until: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnflagBody {
    reason: Option<String>,
}

/// Flags the customer as a test user (full access without paying), audited.
pub async fn flag_test_user(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    user_id: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let admin = caller.require_admin()?;
    let body: FlagBody = read_json(&req, payload).await?;
    super::auth::validate_user_id(&user_id)?;
    let changed = actions::flag_test_user(
        &state.pool,
        TestUserFlag {
            user_id: &user_id,
            reason: &body.reason,
            until: body.until,
            admin_id: admin,
        },
        Utc::now(),
    )
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user_id.as_str(), "test_user": true, "until": body.until, "changed": changed,
    })))
}

/// Removes the test-user flag, audited.
pub async fn unflag_test_user(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    user_id: web::Path<String>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let admin = caller.require_admin()?;
    let body: UnflagBody = read_json(&req, payload).await?;
    super::auth::validate_user_id(&user_id)?;
    let reason = body
        .reason
        .unwrap_or_else(|| "unflagged by an admin".to_string());
    let changed = actions::unflag_test_user(&state.pool, &user_id, &reason, admin).await?;
    Ok(HttpResponse::Ok().json(json!({
        "user_id": user_id.as_str(), "test_user": false, "changed": changed,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminPageQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Any customer's transactions.
pub async fn transactions(
    caller: Caller,
    user_id: web::Path<String>,
    query: web::Query<AdminPageQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    caller.require_admin()?;
    super::auth::validate_user_id(&user_id)?;
    let query = query.into_inner();
    let page = transactions_page(
        &state.pool,
        &user_id,
        &PageQuery {
            limit: query.limit,
            cursor: query.cursor,
            user_id: None,
        },
    )
    .await?;
    Ok(HttpResponse::Ok().json(page))
}
