//! `customer.subscription.*`: store the snapshot if it is the latest, then derive access.

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;
use tracing::debug;

use crate::customers::{self, Tx};
use crate::emails::{self, EmailData, Kind, NewEmail};
use crate::ledger::Applied;
use crate::process::ProcessError;
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

pub async fn snapshot(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    payload: &serde_json::Value,
) -> Result<Applied, ProcessError> {
    let subscription: Subscription = stripe::object(payload)?;
    let customer_id = customers::lock_or_create(tx, subscription.customer.id()).await?;
    let price = subscription.price();
    let price_id = price.map(|p| p.id.as_str());
    let tier = price_id.map_or(plans.default_tier(), |id| plans.tier_for_price(id));
    let plan = price_id
        .and_then(|id| plans.price(id))
        .map(|p| p.plan.as_str());
    let (period_start, period_end) = subscription.period();
    let rank = snapshot_rank(&subscription.status, &envelope.event_type);
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, product_id, tier, plan,
                                    billing_interval, current_period_start, current_period_end, cancel_at_period_end,
                                    canceled_at, ended_at, trial_end, snapshot_created, snapshot_rank, snapshot_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (stripe_subscription_id) DO UPDATE SET
             stripe_customer_id = EXCLUDED.stripe_customer_id, status = EXCLUDED.status,
             price_id = EXCLUDED.price_id, product_id = EXCLUDED.product_id, tier = EXCLUDED.tier,
             plan = EXCLUDED.plan, billing_interval = EXCLUDED.billing_interval,
             current_period_start = EXCLUDED.current_period_start, current_period_end = EXCLUDED.current_period_end,
             cancel_at_period_end = EXCLUDED.cancel_at_period_end, canceled_at = EXCLUDED.canceled_at,
             ended_at = EXCLUDED.ended_at, trial_end = EXCLUDED.trial_end,
             snapshot_created = EXCLUDED.snapshot_created, snapshot_rank = EXCLUDED.snapshot_rank,
             snapshot_event_id = EXCLUDED.snapshot_event_id, updated_at = now()
           WHERE (subscriptions.snapshot_created, subscriptions.snapshot_rank, subscriptions.snapshot_event_id)
               < (EXCLUDED.snapshot_created, EXCLUDED.snapshot_rank, EXCLUDED.snapshot_event_id)",
    )
    .bind(&subscription.id)
    .bind(subscription.customer.id())
    .bind(&subscription.status)
    .bind(price_id)
    .bind(price.and_then(|p| p.product.as_ref()).map(|p| p.id()))
    .bind(tier)
    .bind(plan)
    .bind(price.and_then(|p| p.recurring.as_ref()).map(|r| r.interval.as_str()))
    .bind(at(period_start))
    .bind(at(period_end))
    .bind(subscription.cancel_at_period_end.unwrap_or(false))
    .bind(at(subscription.canceled_at))
    .bind(at(subscription.ended_at))
    .bind(at(subscription.trial_end))
    .bind(envelope.created)
    .bind(rank)
    .bind(&envelope.id)
    .execute(&mut **tx)
    .await?;
    let stored = Stored {
        envelope,
        payload,
        subscription: &subscription,
        customer_id,
        tier,
    };
    record_change(tx, plans, &stored).await?;
    customers::recompute_after_event(tx, plans, customer_id, envelope).await?;
    queue_email(tx, plans, &stored).await?;
    Ok(Applied::Processed)
}

/// A snapshot just stored (or gated), for what follows from it.
struct Stored<'a> {
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
async fn queue_email(tx: &mut Tx, plans: &Plans, stored: &Stored<'_>) -> Result<(), ProcessError> {
    let Stored {
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
    stored: &Stored<'_>,
) -> Result<(), ProcessError> {
    let Stored {
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
