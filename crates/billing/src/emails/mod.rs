//! Payment emails (payment failed, trial ending, receipt, cancellation): queued
//! in `email_outbox` in the transaction of the event that causes them, sent
//! over SMTP after commit by [`sender`], at most once per row.
//!
//! A row is written only while the fact it reports is still true in the stored
//! state after the event (a late, superseded notice sends nothing), and only
//! when an address is known. `dedupe_key` makes it one email per fact, however
//! many events report it (`invoice.paid` and `invoice.payment_succeeded` give
//! one receipt). See docs/billing-state.md, "Emails".

pub mod sender;
pub mod smtp;
pub mod templates;

use serde::{Deserialize, Serialize};
use tollgate_events::EventEnvelope;
use tracing::{debug, info};

use crate::customers::Tx;
use crate::process::ProcessError;

/// NOTIFY channel that wakes the sender when a row commits.
pub const CHANNEL: &str = "tollgate_email";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    PaymentFailed,
    TrialEnding,
    Receipt,
    /// The subscription has ended (`customer.subscription.deleted`).
    Cancellation,
    /// The customer asked to cancel at the end of the period: "ends on ...".
    CancellationScheduled,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::PaymentFailed,
        Kind::TrialEnding,
        Kind::Receipt,
        Kind::Cancellation,
        Kind::CancellationScheduled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentFailed => "payment_failed",
            Self::TrialEnding => "trial_ending",
            Self::Receipt => "receipt",
            Self::Cancellation => "cancellation",
            Self::CancellationScheduled => "cancellation_scheduled",
        }
    }

    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// What the templates show, stored as the row's `data` (jsonb). Money in
/// integer minor units with its currency; times in unix seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_invoice_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_payment_attempt: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paid_at: Option<i64>,
    /// The invoice pays for a subscription (its features pause when unpaid).
    pub for_subscription: bool,
    /// The tier's display name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial_end: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period_end: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<i64>,
}

/// One email to queue.
pub struct NewEmail<'a> {
    pub kind: Kind,
    /// One email per fact: `receipt:<invoice>`, `payment_failed:<invoice>:<attempt>`,
    /// `trial_ending:<subscription>:<trial end>`, `cancellation:<subscription>`,
    /// `cancellation_scheduled:<subscription>:<period end>`. Also the local part
    /// of the Message-ID.
    pub dedupe_key: String,
    /// The invoice or subscription the email is about.
    pub stripe_object_id: &'a str,
    pub customer_id: uuid::Uuid,
    /// Used when the customer row has no address (an invoice's `customer_email`).
    pub fallback_recipient: Option<&'a str>,
    pub data: EmailData,
}

/// Queues `email` in the event's transaction (the customer row is locked).
/// Nothing is queued for a deleted customer or when no address is known; a
/// second event reporting the same fact, or a redelivery, queues nothing.
pub async fn enqueue(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    email: NewEmail<'_>,
) -> Result<(), ProcessError> {
    let kind = email.kind.as_str();
    let (address, deleted): (Option<String>, bool) =
        sqlx::query_as("SELECT email, deleted_at IS NOT NULL FROM customers WHERE id = $1")
            .bind(email.customer_id)
            .fetch_one(&mut **tx)
            .await?;
    if deleted {
        debug!(event_id = %envelope.id, customer_id = %email.customer_id, kind, "customer deleted: no email");
        return Ok(());
    }
    let recipient = address
        .as_deref()
        .or(email.fallback_recipient)
        .map(str::trim)
        .filter(|a| !a.is_empty());
    let Some(recipient) = recipient else {
        info!(event_id = %envelope.id, customer_id = %email.customer_id, kind, "no email address known: email not queued");
        return Ok(());
    };
    let data = serde_json::to_value(&email.data).expect("email data serialises");
    let queued: Option<i64> = sqlx::query_scalar(
        "INSERT INTO email_outbox (event_id, kind, dedupe_key, customer_id, stripe_object_id, recipient, data)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT DO NOTHING
         RETURNING id",
    )
    .bind(&envelope.id)
    .bind(kind)
    .bind(&email.dedupe_key)
    .bind(email.customer_id)
    .bind(email.stripe_object_id)
    .bind(recipient)
    .bind(&data)
    .fetch_optional(&mut **tx)
    .await?;
    match queued {
        Some(outbox_id) => {
            debug!(outbox_id, event_id = %envelope.id, customer_id = %email.customer_id, kind, "email queued");
            // Wakes a sender at once, after the commit (crate::wakeup).
            if !tx.wake_locally_after_commit(CHANNEL) {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        None => {
            debug!(event_id = %envelope.id, customer_id = %email.customer_id, kind, dedupe_key = %email.dedupe_key,
                   "email already queued for this fact")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_data_is_compact() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("newsletter"), None);
        let data = EmailData {
            amount: Some(1999),
            currency: Some("usd".into()),
            ..EmailData::default()
        };
        let json = serde_json::to_value(&data).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "amount": 1999, "currency": "usd", "for_subscription": false })
        );
        assert_eq!(serde_json::from_value::<EmailData>(json).unwrap(), data);
        assert_eq!(
            serde_json::from_value::<EmailData>(serde_json::json!({})).unwrap(),
            EmailData::default()
        );
    }
}
