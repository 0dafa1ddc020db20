//! Test users: an explicit list (user ids, emails) and email-domain patterns,
//! each with an expiry, kept in PostgreSQL (`test_users`, its own audit trail:
//! who granted, why, until when, who revoked). Every replica holds the active
//! rules in memory and reloads them when the table changes (NOTIFY) and every
//! 30 seconds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::warn;

use crate::model::{CustomerState, Subject};

const CHANNEL: &str = "tollgate_test_users";

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TestUserRule {
    pub id: i64,
    pub kind: String,
    pub value: String,
    pub tier: Option<String>,
    pub expires_at: DateTime<Utc>,
}

impl TestUserRule {
    fn matches_email(&self, email: &str) -> bool {
        match self.kind.as_str() {
            "email" => self.value == email,
            "email_domain" => {
                let Some((_, domain)) = email.rsplit_once('@') else {
                    return false;
                };
                match self.value.strip_prefix("*.") {
                    Some(parent) => domain
                        .strip_suffix(parent)
                        .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                    None => domain == self.value,
                }
            }
            _ => false,
        }
    }
}

/// The active rules, shared by every request.
#[derive(Debug, Default, Clone)]
pub struct TestUsers {
    rules: Arc<RwLock<Vec<TestUserRule>>>,
}

impl TestUsers {
    pub fn replace(&self, rules: Vec<TestUserRule>) {
        *self.rules.write() = rules;
    }

    /// The first unexpired rule matching the subject or the customer it names.
    pub fn matching(
        &self,
        subject: &Subject,
        state: Option<&CustomerState>,
        now: DateTime<Utc>,
    ) -> Option<TestUserRule> {
        let rules = self.rules.read();
        if rules.is_empty() {
            return None;
        }
        let mut user_ids: Vec<&str> = Vec::with_capacity(2);
        let mut emails: Vec<&str> = Vec::with_capacity(2);
        match subject {
            Subject::UserId(id) => user_ids.push(id),
            Subject::Email(email) => emails.push(email),
        }
        if let Some(state) = state {
            user_ids.extend(state.user_id.as_deref());
            emails.extend(state.email.as_deref());
        }
        rules
            .iter()
            .filter(|rule| rule.expires_at > now)
            .find(|rule| match rule.kind.as_str() {
                "user_id" => user_ids.contains(&rule.value.as_str()),
                _ => emails.iter().any(|email| rule.matches_email(email)),
            })
            .cloned()
    }
}

pub async fn load(pool: &PgPool) -> Result<Vec<TestUserRule>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, value, tier, expires_at FROM test_users
          WHERE revoked_at IS NULL AND expires_at > now() ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Keeps `users` current until `stop`.
pub async fn keep_loaded(pool: PgPool, users: TestUsers, mut stop: watch::Receiver<bool>) {
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            match PgListener::connect_with(&pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => listener = Some(l),
                    Err(e) => warn!(error = %e, "test users: cannot LISTEN; polling"),
                },
                Err(e) => warn!(error = %e, "test users: cannot connect; polling"),
            }
        }
        match load(&pool).await {
            Ok(rules) => users.replace(rules),
            Err(e) => warn!(error = %e, "test users: reload failed; keeping the rules held"),
        }
        let woken = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = woken => if result.is_err() { listener = None; },
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// What kind of rule a value makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    UserId,
    Email,
    EmailDomain,
}

impl RuleKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::UserId => "user_id",
            Self::Email => "email",
            Self::EmailDomain => "email_domain",
        }
    }
}

/// Grants test access (recorded with who and why); returns the rule id.
pub async fn grant(
    pool: &PgPool,
    kind: RuleKind,
    value: &str,
    tier: Option<&str>,
    until: DateTime<Utc>,
    granted_by: &str,
    reason: &str,
) -> Result<i64, sqlx::Error> {
    let value = match kind {
        RuleKind::UserId => value.trim().to_string(),
        RuleKind::Email | RuleKind::EmailDomain => value.trim().to_lowercase(),
    };
    sqlx::query_scalar(
        "INSERT INTO test_users (kind, value, tier, expires_at, granted_by, reason)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(kind.as_str())
    .bind(value)
    .bind(tier)
    .bind(until)
    .bind(granted_by)
    .bind(reason)
    .fetch_one(pool)
    .await
}

/// A rule with its audit trail.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TestUserRecord {
    pub id: i64,
    pub kind: String,
    pub value: String,
    pub tier: Option<String>,
    pub granted_by: String,
    pub reason: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// Every rule (with `all`, revoked and expired ones too), newest first.
pub async fn list(pool: &PgPool, all: bool) -> Result<Vec<TestUserRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, value, tier, granted_by, reason, expires_at, created_at, revoked_at, revoked_by
           FROM test_users
          WHERE $1 OR (revoked_at IS NULL AND expires_at > now())
          ORDER BY id DESC",
    )
    .bind(all)
    .fetch_all(pool)
    .await
}

/// Ends a rule early; returns whether it was active.
pub async fn revoke(pool: &PgPool, id: i64, revoked_by: &str) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE test_users SET revoked_at = now(), revoked_by = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .bind(revoked_by)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: &str, value: &str, expires_in: i64) -> TestUserRule {
        TestUserRule {
            id: 1,
            kind: kind.into(),
            value: value.into(),
            tier: None,
            expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
        }
    }

    #[test]
    fn rules_match_ids_emails_and_domains_until_they_expire() {
        let users = TestUsers::default();
        let now = Utc::now();
        let email = |e: &str| Subject::Email(e.into());
        users.replace(vec![
            rule("user_id", "qa_1", 60),
            rule("email", "ada@example.com", 60),
            rule("email_domain", "test.example.org", 60),
            rule("email_domain", "*.qa.example.net", 60),
            rule("user_id", "expired", -1),
        ]);
        assert!(
            users
                .matching(&Subject::UserId("qa_1".into()), None, now)
                .is_some()
        );
        assert!(
            users
                .matching(&Subject::UserId("expired".into()), None, now)
                .is_none()
        );
        assert!(
            users
                .matching(&email("ada@example.com"), None, now)
                .is_some()
        );
        assert!(
            users
                .matching(&email("bob@example.com"), None, now)
                .is_none()
        );
        assert!(
            users
                .matching(&email("x@test.example.org"), None, now)
                .is_some()
        );
        assert!(
            users
                .matching(&email("x@eviltest.example.org"), None, now)
                .is_none()
        );
        assert!(
            users
                .matching(&email("x@a.qa.example.net"), None, now)
                .is_some()
        );
        assert!(
            users
                .matching(&email("x@qa.example.net"), None, now)
                .is_none()
        );
        assert!(
            users
                .matching(&email("x@evilqa.example.net"), None, now)
                .is_none()
        );
        // A user id subject matches through the customer's email.
        let state = CustomerState {
            customer_id: uuid::Uuid::nil(),
            customer_version: 1,
            user_id: Some("u9".into()),
            email: Some("z@test.example.org".into()),
            access_status: "none".into(),
            tier: None,
            stripe_features: vec![],
            test_user: false,
            test_user_until: None,
            deleted: false,
        };
        assert!(
            users
                .matching(&Subject::UserId("u9".into()), Some(&state), now)
                .is_some()
        );
    }
}
