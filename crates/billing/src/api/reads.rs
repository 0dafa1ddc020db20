//! `GET /v1/billing/transactions`, `/invoices`, `/payment-methods`: a user's history, in
//! pages (`?limit=` 1..100, default 20; `?cursor=` from the previous page). A user billing
//! does not know has empty lists.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::body::{Page, PageQuery, split_cursor};
use super::errors::ApiError;
use super::{ApiState, Caller};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Transaction {
    pub id: uuid::Uuid,
    /// `subscription_payment`, `upgrade`, `downgrade`, `cancel`, `credit_topup`, `refund`.
    pub kind: String,
    /// `pending`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    /// Minor units (cents) of `currency`; null for non-monetary entries (a cancellation).
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub description: Option<String>,
    /// The Stripe object it records (invoice, checkout session, refund).
    pub stripe_object_id: String,
    pub occurred_at: DateTime<Utc>,
}

/// A page of the user's transactions, newest first.
pub async fn transactions_page(
    pool: &PgPool,
    user_id: &str,
    query: &PageQuery,
) -> Result<Page<Transaction>, ApiError> {
    let limit = query.limit()?;
    let after = match &query.cursor {
        Some(cursor) => {
            let (micros, id) = split_cursor(cursor)?;
            let bad = || ApiError::invalid("`cursor` is not one this API returned");
            Some((
                DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?,
                id.parse::<uuid::Uuid>().map_err(|_| bad())?,
            ))
        }
        None => None,
    };
    let rows: Vec<Transaction> = sqlx::query_as(
        "SELECT t.id, t.kind, t.status, t.amount, trim(t.currency) AS currency, t.description,
                t.stripe_object_id, t.occurred_at
           FROM transactions t JOIN customers c ON c.id = t.customer_id
          WHERE c.user_id = $1
            AND ($2::timestamptz IS NULL OR (t.occurred_at, t.id) < ($2, $3))
          ORDER BY t.occurred_at DESC, t.id DESC
          LIMIT $4",
    )
    .bind(user_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(i64::from(limit) + 1)
    .fetch_all(pool)
    .await?;
    Ok(Page::from_rows(rows, limit, |t| {
        format!("{}_{}", t.occurred_at.timestamp_micros(), t.id)
    }))
}

pub async fn transactions(
    caller: Caller,
    query: web::Query<PageQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let user_id = caller.subject(query.user_id.as_deref())?;
    Ok(HttpResponse::Ok().json(transactions_page(&state.pool, &user_id, &query).await?))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Invoice {
    pub id: String,
    pub number: Option<String>,
    /// `draft`, `open`, `paid`, `void`, `uncollectible`.
    pub status: String,
    pub currency: String,
    /// Minor units of `currency`.
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    /// Stripe's page for the invoice (pay it, download it).
    pub hosted_invoice_url: Option<String>,
    /// The invoice as a PDF.
    pub invoice_pdf: Option<String>,
    pub created: DateTime<Utc>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub invoice_created: i64,
}

pub async fn invoices(
    caller: Caller,
    query: web::Query<PageQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let user_id = caller.subject(query.user_id.as_deref())?;
    let limit = query.limit()?;
    let after = query.cursor.as_deref().map(split_cursor).transpose()?;
    let rows: Vec<Invoice> = sqlx::query_as(
        "SELECT i.stripe_invoice_id AS id, i.number, i.status, trim(i.currency) AS currency,
                i.amount_due, i.amount_paid, i.amount_remaining, i.hosted_invoice_url,
                i.invoice_pdf, to_timestamp(i.invoice_created) AS created, i.period_start,
                i.period_end, i.paid_at, i.invoice_created
           FROM invoices i JOIN customers c ON c.stripe_customer_id = i.stripe_customer_id
          WHERE c.user_id = $1 AND i.status <> 'draft'
            AND ($2::bigint IS NULL OR (i.invoice_created, i.stripe_invoice_id) < ($2, $3::text))
          ORDER BY i.invoice_created DESC, i.stripe_invoice_id DESC
          LIMIT $4",
    )
    .bind(&user_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.pool)
    .await?;
    let page = Page::from_rows(rows, limit, |i| format!("{}_{}", i.invoice_created, i.id));
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct PaymentMethod {
    pub id: String,
    /// `card`, `sepa_debit`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub brand: Option<String>,
    pub last4: Option<String>,
    pub exp_month: Option<i16>,
    pub exp_year: Option<i16>,
    /// The customer's default for invoices.
    #[serde(rename = "default")]
    pub is_default: bool,
}

/// Attached payment methods, by id (never a card number: brand, last 4, expiry).
pub async fn payment_methods(
    caller: Caller,
    query: web::Query<PageQuery>,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let user_id = caller.subject(query.user_id.as_deref())?;
    let limit = query.limit()?;
    if query
        .cursor
        .as_ref()
        .is_some_and(|c| c.is_empty() || c.len() > 255)
    {
        return Err(ApiError::invalid("`cursor` is not one this API returned"));
    }
    let rows: Vec<PaymentMethod> = sqlx::query_as(
        "SELECT p.stripe_payment_method_id AS id, p.type AS kind, p.brand, p.last4, p.exp_month,
                p.exp_year, p.stripe_payment_method_id IS NOT DISTINCT FROM c.default_payment_method AS is_default
           FROM payment_methods p JOIN customers c ON c.stripe_customer_id = p.stripe_customer_id
          WHERE c.user_id = $1 AND p.attached
            AND ($2::text IS NULL OR p.stripe_payment_method_id > $2)
          ORDER BY p.stripe_payment_method_id
          LIMIT $3",
    )
    .bind(&user_id)
    .bind(query.cursor.as_deref())
    .bind(i64::from(limit) + 1)
    .fetch_all(&state.pool)
    .await?;
    let page = Page::from_rows(rows, limit, |p| p.id.clone());
    Ok(HttpResponse::Ok().json(page))
}
