//! The billing page: `GET /billing` (docs/api.md, "The billing page"). Plain HTML, one
//! script and one stylesheet, compiled into the binary. A signed-in user opens
//! `/billing#token=<JWT>`; the script calls this API's `/v1` endpoints with that token
//! (same origin, so no CORS), shows status, credits and history, and starts checkouts
//! and portal sessions. Outside `/v1`, so not part of the OpenAPI document.
//!
//! The page gets its own Content-Security-Policy (the API default, `default-src 'none'`,
//! would block its own script): only this origin's script, style and fetches; no inline
//! script, no framing, no form posts. The token comes in the fragment, which browsers
//! never send to a server or put in a Referer, rather than the query string, which would
//! land in access logs.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde_json::json;
use tollgate_plans::PackPrice;

use super::ApiState;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/billing.js");
const STYLE: &str = include_str!("page/billing.css");

/// The page's policy. `connect-src 'self'`: the script talks to this API only; checkout
/// and portal are top-level navigations, which CSP does not restrict.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The page's paths (outside `/v1`).
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/billing", web::get().to(index))
        .route("/billing/", web::get().to(index))
        .route("/billing/billing.js", web::get().to(script))
        .route("/billing/billing.css", web::get().to(style))
        .route("/billing/catalog.json", web::get().to(catalog));
}

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    // The other security headers (nosniff, no framing, no-store, no referrer) come from
    // the API's defaults; only the CSP differs.
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, PAGE_CSP))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX)
}

async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE)
}

/// What the page may sell, from the plans file: plans by tier rank, credit packs, and
/// whether checkout is configured at all. Public: the same as a pricing page shows.
async fn catalog(state: web::Data<ApiState>) -> HttpResponse {
    let plans = &state.plans;
    let mut prices: Vec<_> = plans.prices_for_sale().collect();
    prices.sort_by_key(|p| {
        (
            plans.tier(&p.tier).map_or(u32::MAX, |t| t.rank),
            p.key.clone(),
        )
    });
    let prices: Vec<_> = prices
        .into_iter()
        .map(|p| {
            json!({
                "key": p.key,
                "name": p.plan,
                "tier": p.tier,
                "tier_name": plans.tier(&p.tier).map_or(p.tier.as_str(), |t| t.name.as_str()),
            })
        })
        .collect();
    let packs: Vec<_> = plans
        .credit_packs()
        .iter()
        .map(|pack| match &pack.price {
            PackPrice::Amount { amount, currency } => {
                json!({ "credits": pack.credits, "amount": amount, "currency": currency })
            }
            // Priced by a Stripe price: the amount lives in Stripe.
            PackPrice::Stripe(_) => {
                json!({ "credits": pack.credits, "amount": null, "currency": null })
            }
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "checkout": state.account.is_some(),
        "plans": prices,
        "credit_packs": packs,
    }))
}
