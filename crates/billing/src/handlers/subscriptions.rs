//! `customer.subscription.*`: store the snapshot if it is the latest, then derive access.

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use crate::customers::{self, Tx};
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
    customers::recompute_after_event(tx, plans, customer_id, envelope).await?;
    Ok(Applied::Processed)
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
