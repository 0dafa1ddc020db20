//! Customer rows: the per-customer lock, linking users, and derived access.

use std::sync::LazyLock;

use tollgate_plans::Plans;

use crate::process::ProcessError;

pub use crate::db::Tx;

/// The customer row for a Stripe customer, created if this is the first we hear
/// of it, and locked until the transaction ends: effects on one customer are
/// serialised across every billing process.
pub async fn lock_or_create(
    tx: &mut Tx,
    stripe_customer_id: &str,
) -> Result<uuid::Uuid, ProcessError> {
    if let Some(id) = tx.locked(stripe_customer_id) {
        return Ok(id);
    }
    // FOR NO KEY UPDATE (here and in `lock_existing`): it serialises billing's
    // writers of the customer, yet lets foreign-key checks of rows that reference it
    // (KEY SHARE: entitlements writing credit rows, say) through, so that those
    // transactions and billing's can never deadlock over the customer row.
    // One round trip in the usual case: lock the existing row (a row lock writes
    // no new row version, unlike a no-op upsert), or insert it. A concurrent
    // insert of the same customer makes both halves come back empty; the next
    // try then finds and locks the committed row.
    for _ in 0..3 {
        let id: Option<uuid::Uuid> = sqlx::query_scalar(
            "WITH existing AS (
                 SELECT id FROM customers WHERE stripe_customer_id = $1 FOR NO KEY UPDATE),
             created AS (
                 INSERT INTO customers (stripe_customer_id)
                 SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM existing)
                 ON CONFLICT (stripe_customer_id) DO NOTHING
                 RETURNING id)
             SELECT id FROM existing UNION ALL SELECT id FROM created",
        )
        .bind(stripe_customer_id)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(id) = id {
            tx.holds_lock(stripe_customer_id, id);
            return Ok(id);
        }
    }
    Err(ProcessError::Transient(format!(
        "customer {stripe_customer_id} could be neither found nor created"
    )))
}

/// Locks the existing rows of these Stripe customers in one statement, in a
/// fixed order (so that concurrent batches cannot deadlock on one another), and
/// remembers them in `tx`. Customers not stored yet are left to
/// [`lock_or_create`]: an event billing ignores must not create one.
pub async fn lock_existing(tx: &mut Tx, stripe_customer_ids: &[&str]) -> Result<(), ProcessError> {
    let wanted: Vec<&str> = stripe_customer_ids
        .iter()
        .copied()
        .filter(|id| tx.locked(id).is_none())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    // LockRows sits above the sort: rows are locked in stripe_customer_id order.
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, stripe_customer_id FROM customers WHERE stripe_customer_id = ANY($1)
          ORDER BY stripe_customer_id FOR NO KEY UPDATE",
    )
    .bind(&wanted)
    .fetch_all(&mut **tx)
    .await?;
    for (id, stripe_customer_id) in rows {
        tx.holds_lock(&stripe_customer_id, id);
    }
    Ok(())
}

/// Records who the customer is. A user id, once set, is never silently replaced by
/// another: that would hand one user's subscription to someone else.
pub async fn link_user(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    user_id: Option<&str>,
    email: Option<&str>,
) -> Result<(), ProcessError> {
    let current: Option<String> = sqlx::query_scalar("SELECT user_id FROM customers WHERE id = $1")
        .bind(customer_id)
        .fetch_one(&mut **tx)
        .await?;
    if let (Some(current), Some(new)) = (current.as_deref(), user_id)
        && current != new
    {
        return Err(ProcessError::Poison(format!(
            "customer is linked to another user id; refusing to relink (customer {customer_id})"
        )));
    }
    sqlx::query(
        "UPDATE customers SET user_id = COALESCE(user_id, $2), email = COALESCE($3, email), updated_at = now()
         WHERE id = $1",
    )
    .bind(customer_id)
    .bind(user_id)
    .bind(email)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// How a Stripe event reached billing: the audit log's `trigger_source` for the access
/// changes it causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delivered by Stripe to ingest, through the broker.
    Webhook,
    /// Fetched from Stripe by `tollgate reconcile` (events it missed) or `tollgate backfill`
    /// (a snapshot of a listed object).
    Reconciliation,
}

impl Source {
    pub fn trigger_source(self) -> &'static str {
        match self {
            Self::Webhook => "stripe_webhook",
            Self::Reconciliation => "reconciliation",
        }
    }
}

/// `recompute_access` for a change a Stripe event made.
pub async fn recompute_after_event(
    tx: &mut Tx,
    plans: &Plans,
    customer_id: uuid::Uuid,
    envelope: &tollgate_events::EventEnvelope,
    source: Source,
) -> Result<(), ProcessError> {
    recompute_access(tx, plans, customer_id, Trigger::event(envelope, source)).await
}

/// What triggered an access recomputation (written to the audit log).
pub struct Trigger<'a> {
    pub source: &'static str,
    pub stripe_event_id: Option<&'a str>,
}

impl<'a> Trigger<'a> {
    pub fn event(envelope: &'a tollgate_events::EventEnvelope, source: Source) -> Self {
        Self {
            source: source.trigger_source(),
            stripe_event_id: Some(&envelope.id),
        }
    }
}

/// Access, derived from the customer's stored subscriptions: the best granting
/// subscription (active or trialing, highest tier rank) decides; without one the
/// most telling non-granting status is kept and the tier falls to the default.
/// Writes an audit row when the status or tier changes.
pub async fn recompute_access(
    tx: &mut Tx,
    plans: &Plans,
    customer_id: uuid::Uuid,
    trigger: Trigger<'_>,
) -> Result<(), ProcessError> {
    let state: AccessInputs = sqlx::query_as(ACCESS_INPUTS.as_str())
        .bind(customer_id)
        .fetch_one(&mut **tx)
        .await?;
    settle_access(tx, plans, customer_id, state, trigger).await
}

/// The access inputs of the customer `$1`, over its stored subscriptions.
static ACCESS_INPUTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH customer_subscriptions AS (
             SELECT s.stripe_subscription_id, s.status, s.tier
               FROM subscriptions s JOIN customers c ON c.stripe_customer_id = s.stripe_customer_id
              WHERE c.id = $1)
         {}",
        access_inputs_over("$1")
    )
});

/// The SELECT that reads a customer's access inputs in one round trip: the current
/// access and, per subscription, its status, tier and whether its payment is failing
/// (an attempted, unpaid invoice newer than its last paid one). The subscriptions
/// come from a CTE named `customer_subscriptions` (stripe_subscription_id, status,
/// tier), so a statement that has just written one can read them as it left them.
pub fn access_inputs_over(customer_id_param: &str) -> String {
    format!(
        "SELECT c.access_status, c.tier,
                EXISTS (SELECT 1 FROM disputes d WHERE d.customer_id = c.id
                                 AND d.status NOT IN ('won', 'warning_closed')) AS disputed,
                COALESCE(s.statuses, '{{}}') AS statuses, COALESCE(s.tiers, '{{}}') AS tiers,
                COALESCE(s.failing, '{{}}') AS failing
           FROM customers c
           LEFT JOIN LATERAL (
               SELECT array_agg(s.status) AS statuses, array_agg(s.tier) AS tiers,
                      array_agg(EXISTS (
                          SELECT 1 FROM invoices f
                           WHERE f.stripe_subscription_id = s.stripe_subscription_id
                             AND f.status = 'open' AND f.attempted AND f.amount_remaining > 0
                             AND f.invoice_created > COALESCE(
                                 (SELECT max(p.invoice_created) FROM invoices p
                                   WHERE p.stripe_subscription_id = s.stripe_subscription_id
                                     AND p.status = 'paid'), 0))) AS failing
                 FROM customer_subscriptions s) s ON true
          WHERE c.id = {customer_id_param}"
    )
}

/// Derives access from `state` (read in this transaction, under the customer's
/// lock) and writes it, with its audit row and announcement, when it changed.
pub async fn settle_access(
    tx: &mut Tx,
    plans: &Plans,
    customer_id: uuid::Uuid,
    state: AccessInputs,
    trigger: Trigger<'_>,
) -> Result<(), ProcessError> {
    let subscriptions: Vec<(String, String, bool)> = state
        .statuses
        .into_iter()
        .zip(state.tiers)
        .zip(state.failing)
        .map(|((status, tier), failing)| (status, tier, failing))
        .collect();
    let (status, tier) = derive_access(plans, &subscriptions);
    let (status, tier) = if state.disputed && plans.policy().revoke_on_dispute {
        ("disputed".to_string(), plans.default_tier().to_string())
    } else {
        (status, tier)
    };
    if state.access_status == status && state.tier.as_deref() == Some(tier.as_str()) {
        return Ok(());
    }
    crate::outbox::emit_access(
        tx,
        customer_id,
        crate::outbox::AccessChange {
            status: &status,
            tier: &tier,
            previous_status: &state.access_status,
            previous_tier: state.tier.as_deref(),
            trigger_source: trigger.source,
            stripe_event_id: trigger.stripe_event_id,
        },
    )
    .await
}

/// What access is derived from (`access_inputs_over`).
#[derive(sqlx::FromRow)]
pub struct AccessInputs {
    access_status: String,
    tier: Option<String>,
    disputed: bool,
    statuses: Vec<String>,
    tiers: Vec<String>,
    failing: Vec<bool>,
}

/// (access status, tier) from (subscription status, tier, payment failing) rows.
pub fn derive_access(plans: &Plans, subscriptions: &[(String, String, bool)]) -> (String, String) {
    let rank = |tier: &str| plans.tier(tier).map_or(0, |t| t.rank);
    let live = |status: &str| status == "active" || status == "trialing";
    let granting = subscriptions
        .iter()
        .filter(|(status, _, failing)| live(status) && !failing)
        .max_by_key(|(status, tier, _)| (rank(tier), status == "active"));
    if let Some((status, tier, _)) = granting {
        return (status.clone(), tier.clone());
    }
    // A live subscription whose payment failed is revoked at once, before Stripe
    // marks it past_due.
    if subscriptions
        .iter()
        .any(|(status, _, failing)| live(status) && *failing)
    {
        return ("payment_failed".into(), plans.default_tier().to_string());
    }
    // Without access, report the status that best explains why.
    const WHY: &[&str] = &[
        "past_due",
        "unpaid",
        "paused",
        "incomplete",
        "canceled",
        "incomplete_expired",
    ];
    let status = WHY
        .iter()
        .find(|why| subscriptions.iter().any(|(status, _, _)| status == *why))
        .map_or("none", |s| s);
    let status = if status == "incomplete_expired" {
        "canceled"
    } else {
        status
    };
    (status.to_string(), plans.default_tier().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans() -> Plans {
        let path = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../../config/plans.toml");
        Plans::load(Some(&path)).unwrap()
    }

    fn subs(list: &[(&str, &str)]) -> Vec<(String, String, bool)> {
        list.iter()
            .map(|(s, t)| (s.to_string(), t.to_string(), false))
            .collect()
    }

    #[test]
    fn the_best_granting_subscription_decides() {
        let plans = plans();
        assert_eq!(derive_access(&plans, &[]), ("none".into(), "free".into()));
        assert_eq!(
            derive_access(
                &plans,
                &subs(&[
                    ("canceled", "pro"),
                    ("active", "pro_plus"),
                    ("trialing", "pro")
                ])
            ),
            ("active".into(), "pro_plus".into())
        );
        assert_eq!(
            derive_access(
                &plans,
                &subs(&[("past_due", "pro"), ("canceled", "enterprise")])
            ),
            ("past_due".into(), "free".into())
        );
        assert_eq!(
            derive_access(&plans, &subs(&[("canceled", "pro")])),
            ("canceled".into(), "free".into())
        );
        assert_eq!(
            derive_access(&plans, &subs(&[("incomplete_expired", "pro")])),
            ("canceled".into(), "free".into())
        );
        let failing = vec![("active".to_string(), "pro".to_string(), true)];
        assert_eq!(
            derive_access(&plans, &failing),
            ("payment_failed".into(), "free".into())
        );
        let mut one_ok = failing.clone();
        one_ok.push(("active".into(), "pro".into(), false));
        assert_eq!(
            derive_access(&plans, &one_ok),
            ("active".into(), "pro".into())
        );
    }
}
