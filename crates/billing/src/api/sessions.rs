//! `POST /v1/checkout/sessions` and `POST /v1/portal/sessions`: Stripe Checkout and the
//! Customer Portal, through the account operations (crate::account).

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::body::{idempotency_key, read_json};
use super::errors::ApiError;
use super::{ApiState, Caller};
use crate::account::{Account, User};

/// `{"kind":"subscription","plan":"pro_monthly"}` or `{"kind":"topup","pack":500}`;
/// service callers add `user_id` (and may add `email`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    kind: String,
    plan: Option<String>,
    pack: Option<u64>,
    user_id: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalBody {
    user_id: Option<String>,
}

fn account(state: &ApiState) -> Result<&Account, ApiError> {
    state.account.as_ref().ok_or(ApiError::NotConfigured(
        "checkout (STRIPE_SECRET_KEY, CHECKOUT_*, PORTAL_RETURN_URL)",
    ))
}

/// The email given to Stripe: a user's verified one from their token; a service's
/// from the body.
fn email_for(caller: &Caller, given: Option<String>) -> Result<Option<String>, ApiError> {
    match caller {
        Caller::User { email, .. } => {
            if given.is_some() {
                return Err(ApiError::invalid(
                    "`email` comes from the user's token; only service callers send it",
                ));
            }
            Ok(email.clone())
        }
        _ => Ok(given.map(|e| e.trim().to_lowercase())),
    }
}

pub async fn checkout(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let body: CheckoutBody = read_json(&req, payload).await?;
    let key = idempotency_key(&req)?;
    let user_id = caller.subject(body.user_id.as_deref())?;
    let email = email_for(&caller, body.email)?;
    let user = User {
        id: &user_id,
        email: email.as_deref(),
    };
    let account = account(&state)?;
    let checkout = match (body.kind.as_str(), body.plan, body.pack) {
        ("subscription", Some(plan), None) => {
            account
                .subscription_checkout(user, &plan, key.as_deref())
                .await?
        }
        ("topup", None, Some(pack)) => account.topup_checkout(user, pack, key.as_deref()).await?,
        ("subscription", _, _) => {
            return Err(ApiError::invalid(
                "a subscription checkout names a `plan` (and no `pack`)",
            ));
        }
        ("topup", _, _) => {
            return Err(ApiError::invalid(
                "a top-up checkout names a credit `pack` (and no `plan`)",
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "`kind` must be \"subscription\" or \"topup\"",
            ));
        }
    };
    Ok(HttpResponse::Created().json(json!({ "id": checkout.session_id, "url": checkout.url })))
}

pub async fn portal(
    req: HttpRequest,
    payload: web::Payload,
    caller: Caller,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let body: PortalBody = read_json(&req, payload).await?;
    let key = idempotency_key(&req)?;
    let user_id = caller.subject(body.user_id.as_deref())?;
    let portal = account(&state)?.portal(&user_id, key.as_deref()).await?;
    Ok(HttpResponse::Created().json(json!({ "url": portal.url })))
}
