//! The email sender: takes due rows from `email_outbox` and submits them over
//! SMTP, at most once each.
//!
//! A row is claimed (`FOR UPDATE SKIP LOCKED`, so replicas never take the same
//! one) and marked `sending` in a statement that commits before any SMTP
//! traffic. From then on the row is only resent when the server certainly did
//! not accept it (see [`smtp::verdict`]); when it may have (no answer after the
//! data, or a sender that died mid-send and left the row `sending` past the
//! lease), the row becomes `unknown` for an operator, never resent by itself.

use std::time::Duration;

use lettre::Address;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use sqlx::PgPool;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::smtp::{Failure, Session, SmtpSettings, Step, Verdict};
use super::{CHANNEL, EmailData, Kind, templates};
use crate::wakeup::Wakeup;

/// A row still `sending` this long after its claim belongs to a sender that
/// stopped mid-send. Well above the longest possible attempt (a handful of SMTP
/// steps of at most 20 s each, plus at most 31 s of retries to record the outcome).
pub const SENDING_LEASE: Duration = Duration::from_secs(300);
/// The longest wait between two attempts of one email.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct SenderConfig {
    pub smtp: SmtpSettings,
    pub from: Mailbox,
    /// Attempts per email before it is `failed`.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubles each time, up to an hour.
    pub retry_base: Duration,
}

/// Sends due emails until `stop`; woken by NOTIFY and polling every second.
/// On stop, the email in hand is finished; the rest wait for the next start
/// (or another replica).
pub async fn run(pool: PgPool, config: SenderConfig, mut stop: watch::Receiver<bool>) {
    let sender = Sender { pool, config };
    let mut wakeup = Wakeup::new(sender.pool.clone(), CHANNEL, "email sender");
    loop {
        if *stop.borrow() {
            return;
        }
        wakeup.listen().await;
        if let Err(e) = sender.pass(&stop).await {
            warn!(error = %e, "email sender failed; retrying");
        }
        if wakeup.wait(POLL, &mut stop).await {
            return;
        }
    }
}

struct Sender {
    pool: PgPool,
    config: SenderConfig,
}

#[derive(sqlx::FromRow)]
struct Claimed {
    id: i64,
    event_id: String,
    kind: String,
    customer_id: uuid::Uuid,
    recipient: String,
    data: serde_json::Value,
    attempts: i32,
    message_id: String,
}

fn count(kind: &str, outcome: &'static str) {
    metrics::counter!("tollgate_billing_emails_total", "kind" => kind.to_string(), "outcome" => outcome)
        .increment(1);
}

impl Sender {
    /// Sends every due email, one SMTP session for the lot while it stays healthy.
    async fn pass(&self, stop: &watch::Receiver<bool>) -> Result<(), sqlx::Error> {
        self.expire_leases().await?;
        self.supersede().await?;
        let mut session: Option<Session> = None;
        while !*stop.borrow() {
            let Some(row) = self.claim().await? else {
                break;
            };
            let result = self.deliver(&mut session, &row).await;
            // The server is unreachable or refuses us: leave the other rows for
            // their own attempts rather than spend them all now.
            let server_trouble = matches!(&result, Err(f) if f.step == Step::Session);
            self.record(&row, result).await;
            if server_trouble {
                break;
            }
        }
        if let Some(session) = session {
            session.close().await;
        }
        Ok(())
    }

    /// Takes the oldest due row and marks it `sending`, committed before any
    /// SMTP traffic. Its Message-ID is fixed on the first attempt.
    async fn claim(&self) -> Result<Option<Claimed>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE email_outbox e
                SET status = 'sending', attempts = e.attempts + 1, claimed_at = now(), updated_at = now(),
                    message_id = COALESCE(e.message_id,
                        '<tollgate.' || regexp_replace(replace(e.dedupe_key, ':', '.'), '[^A-Za-z0-9_.-]', '-', 'g')
                        || '@' || $1 || '>')
               FROM (SELECT id FROM email_outbox
                      WHERE status = 'pending' AND next_attempt_at <= now()
                      ORDER BY next_attempt_at, id
                      LIMIT 1
                      FOR UPDATE SKIP LOCKED) due
              WHERE e.id = due.id
          RETURNING e.id, e.event_id, e.kind, e.customer_id, e.recipient, e.data, e.attempts, e.message_id",
        )
        .bind(self.config.from.email.domain())
        .fetch_optional(&self.pool)
        .await
    }

    async fn deliver(
        &self,
        session: &mut Option<Session>,
        row: &Claimed,
    ) -> Result<String, Failure> {
        let message = self.compose(row).map_err(|detail| Failure {
            step: Step::MailFrom,
            code: None,
            verdict: Verdict::Reject,
            detail,
        })?;
        let mut open = match session.take() {
            Some(open) => open,
            None => Session::open(&self.config.smtp).await?,
        };
        // After a failure the session is dropped (closed without QUIT): its state
        // is unknown, and the outcome is recorded first.
        let reply = open.send(message.envelope(), &message.formatted()).await?;
        *session = Some(open);
        Ok(reply)
    }

    fn compose(&self, row: &Claimed) -> Result<Message, String> {
        let kind = Kind::parse(&row.kind).ok_or_else(|| format!("unknown kind {}", row.kind))?;
        let data: EmailData =
            serde_json::from_value(row.data.clone()).map_err(|e| format!("template data: {e}"))?;
        let to: Address = row
            .recipient
            .parse()
            .map_err(|_| "the recipient is not a valid email address".to_string())?;
        let signature = self.config.from.name.as_deref().unwrap_or("Billing");
        let email = templates::render(kind, &data, signature);
        Message::builder()
            .from(self.config.from.clone())
            .to(Mailbox::new(None, to))
            .subject(email.subject)
            .message_id(Some(row.message_id.clone()))
            // RFC 3834: no vacation auto-replies to a notification.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".into(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body)
            .map_err(|e| format!("building the message: {e}"))
    }

    /// Writes the outcome, retrying the write for a while if the database is
    /// away; if it stays away the row is left `sending` and its lease expires
    /// into `unknown`, which is right for a sent email and merely cautious for
    /// one that failed.
    async fn record(&self, row: &Claimed, result: Result<String, Failure>) {
        let kind = row.kind.as_str();
        let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
        let (status, outcome, retry_in, text) = match &result {
            Ok(reply) => ("sent", "sent", None, reply.as_str()),
            Err(f) => match f.verdict {
                Verdict::Retry if attempts < self.config.max_attempts => (
                    "pending",
                    "retry",
                    Some(self.backoff(attempts)),
                    f.detail.as_str(),
                ),
                Verdict::Retry | Verdict::Reject => ("failed", "failed", None, f.detail.as_str()),
                Verdict::Unknown => ("unknown", "unknown", None, f.detail.as_str()),
            },
        };
        let mut pause = Duration::from_secs(1);
        while let Err(e) = self.write_outcome(row.id, status, retry_in, text).await {
            if pause > Duration::from_secs(16) {
                error!(outbox_id = row.id, event_id = %row.event_id, error = %e, status,
                       "cannot record the email's outcome; its lease will expire into 'unknown'");
                return;
            }
            warn!(outbox_id = row.id, error = %e, "recording the email's outcome failed; retrying");
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        count(kind, outcome);
        let (outbox_id, event_id, customer_id) = (row.id, row.event_id.as_str(), row.customer_id);
        match &result {
            Ok(_) => info!(outbox_id, event_id, %customer_id, kind, attempts, "email sent"),
            Err(f) => {
                let (step, smtp_code) = (f.step.as_str(), f.code);
                match outcome {
                    "retry" => {
                        warn!(outbox_id, event_id, %customer_id, kind, attempts, step, smtp_code,
                                     retry_in_s = retry_in.unwrap_or_default().as_secs(), "email not sent; will retry")
                    }
                    "unknown" => {
                        error!(outbox_id, event_id, %customer_id, kind, attempts, step, smtp_code,
                                        "email outcome unknown (no answer after the message): not resent; see docs/billing-state.md")
                    }
                    _ => error!(outbox_id, event_id, %customer_id, kind, attempts, step, smtp_code,
                                "email failed for good"),
                }
            }
        }
    }

    async fn write_outcome(
        &self,
        id: i64,
        status: &str,
        retry_in: Option<Duration>,
        text: &str,
    ) -> Result<(), sqlx::Error> {
        // A late 'sent' still wins over a lease that expired meanwhile: it is the truth.
        sqlx::query(
            "UPDATE email_outbox
                SET status = $2,
                    next_attempt_at = CASE WHEN $2 = 'pending' THEN now() + make_interval(secs => $3) ELSE next_attempt_at END,
                    sent_at = CASE WHEN $2 = 'sent' THEN now() END,
                    smtp_reply = CASE WHEN $2 = 'sent' THEN $4 END,
                    last_error = CASE WHEN $2 = 'sent' THEN NULL ELSE $4 END,
                    updated_at = now()
              WHERE id = $1 AND (status = 'sending' OR (status = 'unknown' AND $2 = 'sent'))",
        )
        .bind(id)
        .bind(status)
        .bind(retry_in.unwrap_or_default().as_secs_f64())
        .bind(text)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `retry_base`, doubled for each attempt made, at most an hour.
    fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.config
            .retry_base
            .saturating_mul(1 << doublings)
            .min(MAX_BACKOFF)
    }

    /// Rows left `sending` past the lease: their sender stopped mid-send, after
    /// the row was committed and maybe after the server took the message.
    async fn expire_leases(&self) -> Result<(), sqlx::Error> {
        let expired: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE email_outbox
                SET status = 'unknown', updated_at = now(),
                    last_error = 'the sender stopped during this attempt (lease expired): it may have been delivered'
              WHERE status = 'sending' AND claimed_at < now() - make_interval(secs => $1)
          RETURNING id, event_id, kind",
        )
        .bind(SENDING_LEASE.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        for (outbox_id, event_id, kind) in expired {
            count(&kind, "unknown");
            error!(
                outbox_id,
                event_id,
                kind,
                "email left 'sending' by a stopped sender: outcome unknown, not resent"
            );
        }
        Ok(())
    }

    /// Pending emails whose news is no longer true are not sent: a failed
    /// payment since paid (or voided), a trial that ended or converted, a
    /// cancellation that was undone, or a customer since deleted.
    async fn supersede(&self) -> Result<(), sqlx::Error> {
        let superseded: Vec<(i64, String, String)> = sqlx::query_as(
            "UPDATE email_outbox e
                SET status = 'superseded', updated_at = now(),
                    last_error = 'no longer true when its turn came (paid, converted, resumed or customer deleted)'
              WHERE e.status = 'pending'
                AND (EXISTS (SELECT 1 FROM customers c WHERE c.id = e.customer_id AND c.deleted_at IS NOT NULL)
                     OR (e.kind = 'payment_failed'
                         AND EXISTS (SELECT 1 FROM invoices i WHERE i.stripe_invoice_id = e.stripe_object_id
                                                                AND i.status IN ('paid', 'void')))
                     OR (e.kind = 'trial_ending'
                         AND ((e.data->>'trial_end')::bigint <= extract(epoch FROM now())
                              OR EXISTS (SELECT 1 FROM subscriptions s WHERE s.stripe_subscription_id = e.stripe_object_id
                                                                         AND s.status <> 'trialing')))
                     OR (e.kind = 'cancellation_scheduled'
                         AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.stripe_subscription_id = e.stripe_object_id
                                        AND NOT (s.cancel_at_period_end
                                                 AND s.status NOT IN ('canceled', 'incomplete_expired')))))
          RETURNING e.id, e.event_id, e.kind",
        )
        .fetch_all(&self.pool)
        .await?;
        for (outbox_id, event_id, kind) in superseded {
            count(&kind, "superseded");
            info!(outbox_id, event_id, kind, "email superseded before sending");
        }
        Ok(())
    }
}
