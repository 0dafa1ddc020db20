//! `customer.subscription.*`: store the snapshot if it is the latest, then derive access.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tollgate_stripe::ObjectKind;
use tracing::debug;

use crate::customers::{self, Source, Tx};
use crate::emails::{self, EmailData, Kind, NewEmail};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::refetch::{self, Handled, Refetch, Settled, SnapshotKey};
use crate::stripe::{self, Subscription, at};

/// Same-second tie-breaker: later lifecycle states rank higher (docs/billing-state.md).
pub fn status_rank(status: &str) -> i32 {
    match status {
        "incomplete" => 0,
        "trialing" => 1,
        "active" => 2,
        "past_due" => 3,
        "unpaid" | "paused" => 4,
        "canceled" | "incomplete_expired" => 5,
        _ => 0,
    }
}

pub fn type_rank(event_type: &str) -> i32 {
    match event_type {
        t if t.ends_with(".created") => 0,
        t if t.ends_with(".deleted") => 3,
        t if t.ends_with(".updated") => 2,
        _ => 1,
    }
}

/// A provisional row (from a checkout, before any subscription snapshot) ranks below all.
pub const PROVISIONAL_RANK: i32 = -1;

pub fn snapshot_rank(status: &str, event_type: &str) -> i32 {
    status_rank(status) * 4 + type_rank(event_type)
}

/// The columns a subscription snapshot decides (the ordering key aside).
#[derive(Debug, PartialEq, sqlx::FromRow)]
pub struct SubscriptionRow {
    stripe_customer_id: String,
    status: String,
    price_id: Option<String>,
    product_id: Option<String>,
    tier: String,
    plan: Option<String>,
    billing_interval: Option<String>,
    current_period_start: Option<DateTime<Utc>>,
    current_period_end: Option<DateTime<Utc>>,
    cancel_at_period_end: bool,
    canceled_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    trial_end: Option<DateTime<Utc>>,
}

impl SubscriptionRow {
    fn new(subscription: &Subscription, plans: &Plans) -> Self {
        let price = subscription.price();
        let price_id = price.map(|p| p.id.clone());
        let tier = price_id
            .as_deref()
            .map_or(plans.default_tier(), |id| plans.tier_for_price(id));
        let plan = price_id
            .as_deref()
            .and_then(|id| plans.price(id))
            .map(|p| p.plan.clone());
        let (period_start, period_end) = subscription.period();
        Self {
            stripe_customer_id: subscription.customer.id().to_string(),
            status: subscription.status.clone(),
            product_id: price
                .and_then(|p| p.product.as_ref())
                .map(|p| p.id().to_string()),
            billing_interval: price
                .and_then(|p| p.recurring.as_ref())
                .map(|r| r.interval.clone()),
            price_id,
            tier: tier.to_string(),
            plan,
            current_period_start: at(period_start),
            current_period_end: at(period_end),
            cancel_at_period_end: subscription.cancel_at_period_end.unwrap_or(false),
            canceled_at: at(subscription.canceled_at),
            ended_at: at(subscription.ended_at),
            trial_end: at(subscription.trial_end),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    row: SubscriptionRow,
    #[sqlx(flatten)]
    key: SnapshotKey,
}

pub async fn snapshot(
    tx: &mut Tx,
    plans: &Plans,
    refetch: Refetch<'_>,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
    subscription: &Subscription,
    source: Source,
) -> Result<Handled, ProcessError> {
    let customer_id = customers::lock_or_create(tx, subscription.customer.id()).await?;
    let row = SubscriptionRow::new(subscription, plans);
    // The plan-change history follows the event, whatever snapshot is stored.
    let event_tier = row.tier.clone();
    let key = SnapshotKey::of_event(
        envelope,
        snapshot_rank(&subscription.status, &envelope.event_type),
    );
    // The stored key is read only when a tie could be settled by Stripe.
    let stored = match refetch {
        Refetch::Off => None,
        _ => stored(tx, &subscription.id).await?,
    };
    let decode = |object: &serde_json::Value| {
        let fetched: Subscription = stripe::decode(object).map_err(|e| e.to_string())?;
        if fetched.id != subscription.id || fetched.customer.id() != subscription.customer.id() {
            return Err(format!(
                "Stripe returned subscription {} of customer {}",
                fetched.id,
                fetched.customer.id()
            ));
        }
        Ok(SubscriptionRow::new(&fetched, plans))
    };
    let stored = stored.as_ref().map(|s| refetch::Stored {
        key: &s.key,
        same_row: s.row == row,
    });
    let (row, key) = match refetch::settle(
        refetch,
        (ObjectKind::Subscription, &subscription.id),
        stored,
        row,
        key,
        decode,
    ) {
        Settled::Write(row, key) => (row, key),
        Settled::Refetch(ambiguity) => return Ok(Handled::Refetch(ambiguity)),
    };
    let access = write(tx, &subscription.id, &row, &key, customer_id).await?;
    let stored = StoredSnapshot {
        envelope,
        payload,
        subscription,
        customer_id,
        tier: &event_tier,
    };
    record_change(tx, plans, &stored).await?;
    let trigger = customers::Trigger::event(envelope, source);
    customers::settle_access(tx, plans, customer_id, access, trigger).await?;
    queue_email(tx, plans, &stored).await?;
    Ok(Applied::Processed.into())
}

async fn stored(tx: &mut Tx, subscription_id: &str) -> Result<Option<Stored>, ProcessError> {
    Ok(sqlx::query_as(
        "SELECT stripe_customer_id, status, price_id, product_id, tier, plan, billing_interval,
                current_period_start, current_period_end, cancel_at_period_end, canceled_at, ended_at,
                trial_end, snapshot_created, snapshot_rank, snapshot_event_id, snapshot_refetched_at
           FROM subscriptions WHERE stripe_subscription_id = $1",
    )
    .bind(subscription_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Stores the row if its key is the greatest: a greater (created, rank), or the same
/// (created, rank) and either a refetched snapshot (which settles its tie) or a greater
/// event id over a snapshot that was not refetched (docs/billing-state.md). In the same
/// statement, reads the customer's access inputs as the write left them.
async fn write(
    tx: &mut Tx,
    subscription_id: &str,
    row: &SubscriptionRow,
    key: &SnapshotKey,
    customer_id: uuid::Uuid,
) -> Result<customers::AccessInputs, ProcessError> {
    Ok(sqlx::query_as(WRITE_AND_READ_ACCESS.as_str())
        .bind(subscription_id)
        .bind(&row.stripe_customer_id)
        .bind(&row.status)
        .bind(&row.price_id)
        .bind(&row.product_id)
        .bind(&row.tier)
        .bind(&row.plan)
        .bind(&row.billing_interval)
        .bind(row.current_period_start)
        .bind(row.current_period_end)
        .bind(row.cancel_at_period_end)
        .bind(row.canceled_at)
        .bind(row.ended_at)
        .bind(row.trial_end)
        .bind(key.snapshot_created)
        .bind(key.snapshot_rank)
        .bind(&key.snapshot_event_id)
        .bind(key.snapshot_refetched_at)
        .bind(customer_id)
        .fetch_one(&mut **tx)
        .await?)
}

/// The gated upsert, then the access inputs over the customer's subscriptions with
/// this one as the upsert left it (a statement does not see its own writes, so the
/// written row comes from RETURNING and its older version is left out).
static WRITE_AND_READ_ACCESS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH written AS (
             INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, product_id, tier, plan,
                                        billing_interval, current_period_start, current_period_end, cancel_at_period_end,
                                        canceled_at, ended_at, trial_end, snapshot_created, snapshot_rank, snapshot_event_id,
                                        snapshot_refetched_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
             ON CONFLICT (stripe_subscription_id) DO UPDATE SET
                 stripe_customer_id = EXCLUDED.stripe_customer_id, status = EXCLUDED.status,
                 price_id = EXCLUDED.price_id, product_id = EXCLUDED.product_id, tier = EXCLUDED.tier,
                 plan = EXCLUDED.plan, billing_interval = EXCLUDED.billing_interval,
                 current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
                 cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at,
                 ended_at = EXCLUDED.ended_at, trial_end = EXCLUDED.trial_end,
                 snapshot_created = EXCLUDED.snapshot_created, snapshot_rank = EXCLUDED.snapshot_rank,
                 snapshot_event_id = EXCLUDED.snapshot_event_id,
                 snapshot_refetched_at = EXCLUDED.snapshot_refetched_at, updated_at = now()
               WHERE (subscriptions.snapshot_created, subscriptions.snapshot_rank)
                       < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank)
                  OR ((subscriptions.snapshot_created, subscriptions.snapshot_rank)
                       = (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank)
                      AND (EXCLUDED.snapshot_refetched_at IS NOT NULL
                           OR (subscriptions.snapshot_refetched_at IS NULL
                               AND subscriptions.snapshot_event_id < EXCLUDED.snapshot_event_id)))
             RETURNING stripe_subscription_id, status, tier),
         customer_subscriptions AS (
             SELECT stripe_subscription_id, status, tier FROM written
             UNION ALL
             SELECT s.stripe_subscription_id, s.status, s.tier
               FROM subscriptions s JOIN customers c ON c.stripe_customer_id = s.stripe_customer_id
              WHERE c.id = $19
                AND NOT EXISTS (SELECT 1 FROM written w WHERE w.stripe_subscription_id = s.stripe_subscription_id))
         {}",
        customers::access_inputs_over("$19")
    )
});

/// A snapshot just stored (or gated), for what follows from it.
struct StoredSnapshot<'a> {
    envelope: &'a EventEnvelope,
    payload: &'a serde_json::Value,
    subscription: &'a Subscription,
    customer_id: uuid::Uuid,
    tier: &'a str,
}

/// The update asks to cancel at the end of the period (`cancel_at_period_end`
/// turned true, per `previous_attributes`).
fn cancel_requested(payload: &serde_json::Value, subscription: &Subscription) -> bool {
    payload
        .pointer("/data/previous_attributes/cancel_at_period_end")
        .and_then(serde_json::Value::as_bool)
        == Some(false)
        && subscription.cancel_at_period_end == Some(true)
}

/// The trial-ending, cancellation or "ends on ..." email, when what the event
/// reports is still true of the stored subscription (docs/billing-state.md,
/// "Emails"): no trial notice once the trial is over or converted, no "ends on"
/// once the cancellation was undone.
async fn queue_email(
    tx: &mut Tx,
    plans: &Plans,
    stored: &StoredSnapshot<'_>,
) -> Result<(), ProcessError> {
    let StoredSnapshot {
        envelope,
        payload,
        subscription,
        customer_id,
        tier,
    } = *stored;
    let (_, period_end) = subscription.period();
    let (kind, dedupe_key) = match envelope.event_type.as_str() {
        "customer.subscription.trial_will_end" => (
            Kind::TrialEnding,
            format!(
                "trial_ending:{}:{}",
                subscription.id,
                subscription.trial_end.unwrap_or(0)
            ),
        ),
        "customer.subscription.deleted" => (
            Kind::Cancellation,
            format!("cancellation:{}", subscription.id),
        ),
        "customer.subscription.updated" if cancel_requested(payload, subscription) => (
            Kind::CancellationScheduled,
            format!(
                "cancellation_scheduled:{}:{}",
                subscription.id,
                period_end.unwrap_or(0)
            ),
        ),
        _ => return Ok(()),
    };
    let (status, trial_end, cancel_at_period_end): (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        bool,
    ) = sqlx::query_as(
        "SELECT status, trial_end, cancel_at_period_end FROM subscriptions WHERE stripe_subscription_id = $1",
    )
    .bind(&subscription.id)
    .fetch_one(&mut **tx)
    .await?;
    let ended = matches!(status.as_str(), "canceled" | "incomplete_expired");
    let still_true = match kind {
        Kind::TrialEnding => {
            subscription.status == "trialing"
                && status == "trialing"
                && trial_end.map(|t| t.timestamp()) == subscription.trial_end
                && subscription
                    .trial_end
                    .is_some_and(|end| end > chrono::Utc::now().timestamp())
        }
        Kind::Cancellation => subscription.status == "canceled",
        _ => cancel_at_period_end && !ended,
    };
    if !still_true {
        debug!(event_id = %envelope.id, %customer_id, kind = kind.as_str(), status,
               "subscription email not queued: no longer (or never) true");
        return Ok(());
    }
    let data = EmailData {
        plan: plans.tier(tier).map(|t| t.name.clone()),
        trial_end: subscription.trial_end.filter(|_| kind == Kind::TrialEnding),
        period_end: period_end.filter(|_| kind == Kind::CancellationScheduled),
        ended_at: subscription
            .ended_at
            .or(subscription.canceled_at)
            .filter(|_| kind == Kind::Cancellation),
        ..EmailData::default()
    };
    let email = NewEmail {
        kind,
        dedupe_key,
        stripe_object_id: &subscription.id,
        customer_id,
        fallback_recipient: None,
        data,
    };
    emails::enqueue(tx, envelope, email).await
}

/// The customer-visible history of plan changes. Derived from the event itself
/// (its `previous_attributes`), not from stored state, and keyed by the event or
/// the subscription, so it is written exactly once whatever the delivery order.
async fn record_change(
    tx: &mut Tx,
    plans: &Plans,
    stored: &StoredSnapshot<'_>,
) -> Result<(), ProcessError> {
    let StoredSnapshot {
        envelope,
        payload,
        subscription,
        customer_id,
        tier,
    } = *stored;
    let previous = payload.pointer("/data/previous_attributes");
    let canceled = envelope.event_type == "customer.subscription.deleted";
    if canceled || cancel_requested(payload, subscription) {
        let status = if canceled { "succeeded" } else { "pending" };
        let description = if canceled {
            "Subscription canceled"
        } else {
            "Cancels at period end"
        };
        // One per subscription; a request never overwrites the cancellation itself.
        sqlx::query(
            "INSERT INTO transactions (customer_id, kind, status, stripe_object_id, description, occurred_at)
             VALUES ($1, 'cancel', $2, $3, $4, to_timestamp($5))
             ON CONFLICT (kind, stripe_object_id) DO UPDATE SET
                 status = CASE WHEN transactions.status = 'succeeded' THEN 'succeeded' ELSE EXCLUDED.status END,
                 description = CASE WHEN transactions.status = 'succeeded' THEN transactions.description
                                    ELSE EXCLUDED.description END,
                 occurred_at = CASE WHEN transactions.status = 'succeeded' THEN transactions.occurred_at
                                    ELSE EXCLUDED.occurred_at END,
                 updated_at = now()",
        )
        .bind(customer_id)
        .bind(status)
        .bind(&subscription.id)
        .bind(description)
        .bind(envelope.created)
        .execute(&mut **tx)
        .await?;
    }
    // A price change: previous_attributes carries the old items (or, before 2025, the old plan).
    let previous_price = previous.and_then(|p| {
        p.pointer("/items/data/0/price/id")
            .or_else(|| p.pointer("/plan/id"))
            .and_then(serde_json::Value::as_str)
    });
    if let Some(previous_price) = previous_price {
        let from = plans.tier_for_price(previous_price);
        let rank = |t: &str| plans.tier(t).map_or(0, |t| t.rank);
        let kind = match rank(tier).cmp(&rank(from)) {
            std::cmp::Ordering::Greater => Some("upgrade"),
            std::cmp::Ordering::Less => Some("downgrade"),
            std::cmp::Ordering::Equal => None,
        };
        if let Some(kind) = kind {
            let name = |t: &str| plans.tier(t).map_or(t.to_string(), |t| t.name.clone());
            sqlx::query(
                "INSERT INTO transactions (customer_id, kind, status, stripe_object_id, description, occurred_at)
                 VALUES ($1, $2, 'succeeded', $3, $4, to_timestamp($5))
                 ON CONFLICT (kind, stripe_object_id) DO NOTHING",
            )
            .bind(customer_id)
            .bind(kind)
            .bind(&envelope.id)
            .bind(format!("{} → {}", name(from), name(tier)))
            .bind(envelope.created)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_the_lifecycle_and_terminal_states_win_ties() {
        assert!(
            snapshot_rank("active", "customer.subscription.updated")
                > snapshot_rank("incomplete", "customer.subscription.created")
        );
        assert!(
            snapshot_rank("canceled", "customer.subscription.deleted")
                > snapshot_rank("active", "customer.subscription.updated")
        );
        assert!(
            snapshot_rank("active", "customer.subscription.updated")
                > snapshot_rank("active", "customer.subscription.created")
        );
        assert!(snapshot_rank("incomplete", "customer.subscription.created") > PROVISIONAL_RANK);
    }
}
