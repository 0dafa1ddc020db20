//! What entitlements knows about a customer, and how subjects are named.

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

/// Who a call is about: one of our user ids, or an email address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    UserId(String),
    /// Lower-cased.
    Email(String),
}

pub const MAX_SUBJECT_LEN: usize = 320;

impl Subject {
    /// `user:<id>` / `email:<address>` explicitly; otherwise anything with an `@`
    /// is an email address and the rest are user ids.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err("subject is required (a user id or an email address)");
        }
        if raw.len() > MAX_SUBJECT_LEN {
            return Err("subject is longer than 320 characters");
        }
        if raw.chars().any(char::is_control) {
            return Err("subject contains control characters");
        }
        let subject = if let Some(id) = raw.strip_prefix("user:") {
            Self::UserId(id.to_string())
        } else if let Some(email) = raw.strip_prefix("email:") {
            Self::Email(email.to_lowercase())
        } else if raw.contains('@') {
            Self::Email(raw.to_lowercase())
        } else {
            Self::UserId(raw.to_string())
        };
        match &subject {
            Self::UserId(id) if id.is_empty() => Err("subject `user:` has no user id"),
            Self::Email(email) if !valid_email(email) => {
                Err("subject is not a valid email address")
            }
            _ => Ok(subject),
        }
    }

    /// The key this subject is cached under.
    pub fn key(&self) -> String {
        match self {
            Self::UserId(id) => format!("u:{id}"),
            Self::Email(email) => format!("e:{email}"),
        }
    }
}

fn valid_email(email: &str) -> bool {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
        }
        None => false,
    }
}

/// A customer's entitlement state, as billing committed it at `customer_version`.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerState {
    pub customer_id: Uuid,
    pub customer_version: i64,
    pub user_id: Option<String>,
    /// Lower-cased; unknown when the state came from a change message.
    pub email: Option<String>,
    pub access_status: String,
    pub tier: Option<String>,
    pub stripe_features: Vec<String>,
    /// The customer row's own test-user flag (set by an operator in billing).
    pub test_user: bool,
    pub test_user_until: Option<DateTime<Utc>>,
    pub deleted: bool,
}

impl CustomerState {
    pub fn flagged_test_user(&self, now: DateTime<Utc>) -> bool {
        self.test_user && self.test_user_until.is_none_or(|until| until > now)
    }
}

/// A cached state with when it is to be read from PostgreSQL again.
#[derive(Debug)]
pub struct Cached {
    pub state: CustomerState,
    /// Set once, when the state was first cached (see `Cache::max_age_of`).
    pub stale_at: Instant,
    /// A Check found it in its last tenth before `stale_at` and had it read again in
    /// the background (at most once; see `Cache::lookup`).
    pub(crate) rereading: AtomicBool,
}

/// The body billing's outbox relay publishes (and the outbox row's payload).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChangeMessage {
    /// Absent in the stored payload (it is the row id); set by the relay.
    #[serde(default)]
    pub version: i64,
    pub customer_id: Uuid,
    pub customer_version: i64,
    pub user_id: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub access_status: String,
    pub tier: Option<String>,
    #[serde(default)]
    pub stripe_features: Vec<String>,
    #[serde(default)]
    pub test_user: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub reason: String,
}

impl ChangeMessage {
    /// The state this change announces; `previous` supplies what messages do not
    /// carry (email, test-user expiry).
    pub fn to_state(&self, previous: Option<&CustomerState>) -> CustomerState {
        CustomerState {
            customer_id: self.customer_id,
            customer_version: self.customer_version,
            user_id: self.user_id.clone(),
            email: previous.and_then(|p| p.email.clone()),
            access_status: self.access_status.clone(),
            tier: self.tier.clone(),
            stripe_features: self.stripe_features.clone(),
            test_user: self.test_user,
            test_user_until: previous
                .filter(|p| p.test_user)
                .and_then(|p| p.test_user_until),
            deleted: self.deleted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_user_ids_or_emails() {
        assert_eq!(
            Subject::parse("user_42"),
            Ok(Subject::UserId("user_42".into()))
        );
        assert_eq!(
            Subject::parse(" Ada@Example.COM "),
            Ok(Subject::Email("ada@example.com".into()))
        );
        assert_eq!(
            Subject::parse("user:a@b"),
            Ok(Subject::UserId("a@b".into()))
        );
        assert_eq!(
            Subject::parse("email:X@y.org"),
            Ok(Subject::Email("x@y.org".into()))
        );
        for bad in [
            "",
            "  ",
            "user:",
            "a@",
            "@b.c",
            "a@b",
            "email:nobody",
            "a\nb",
        ] {
            assert!(Subject::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Subject::parse(&"x".repeat(400)).is_err());
    }

    #[test]
    fn change_messages_parse_as_the_relay_sends_them() {
        let body = r#"{"version":12,"customer_id":"6f1c3b52-2a57-4d7e-9d4f-3a1d2b3c4d5e","customer_version":3,
            "user_id":"u1","stripe_customer_id":"cus_1","access_status":"payment_failed","tier":"free",
            "stripe_features":["x"],"test_user":false,"deleted":false,"reason":"access"}"#;
        let change: ChangeMessage = serde_json::from_str(body).unwrap();
        assert_eq!(change.version, 12);
        assert_eq!(change.access_status, "payment_failed");
        let state = change.to_state(None);
        assert_eq!(state.customer_version, 3);
        assert_eq!(state.email, None);
    }
}
