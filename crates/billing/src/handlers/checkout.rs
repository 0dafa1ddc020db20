//! `checkout.session.completed`.

use tollgate_events::EventEnvelope;
use tollgate_plans::Plans;

use super::subscriptions::PROVISIONAL_RANK;
use crate::customers::{self, Source, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::CheckoutSession;

/// Subscription mode: links the Stripe customer to our user and, if no snapshot of
/// the subscription has arrived yet, activates it provisionally (the lowest
/// possible ordering key, so any real snapshot replaces it). Payment mode
/// (credit top-ups) is handled with the credit ledger.
pub async fn completed(
    tx: &mut Tx,
    plans: &Plans,
    envelope: &EventEnvelope,
    session: &CheckoutSession,
    source: Source,
) -> Result<Applied, ProcessError> {
    match session.mode.as_deref() {
        Some("subscription") => {}
        Some("payment") => return super::credits::topup(tx, envelope, session).await,
        _ => return Ok(Applied::Ignored),
    }
    let Some(stripe_customer) = session.customer.as_ref().map(|c| c.id().to_string()) else {
        return Err(ProcessError::Poison(format!(
            "checkout session {} has no customer",
            session.id
        )));
    };
    let customer_id = customers::lock_or_create(tx, &stripe_customer).await?;
    customers::link_user(tx, customer_id, session.user_id(), session.email()).await?;

    if let Some(subscription) = session.subscription.as_ref() {
        let paid = matches!(
            session.payment_status.as_deref(),
            Some("paid" | "no_payment_required")
        );
        let status = if paid { "active" } else { "incomplete" };
        // The price is not in the session webhook: the tier comes with the real snapshot.
        sqlx::query(
            "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, tier,
                                        snapshot_created, snapshot_rank, snapshot_event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (stripe_subscription_id) DO NOTHING",
        )
        .bind(subscription.id())
        .bind(&stripe_customer)
        .bind(status)
        .bind(plans.default_tier())
        // Created 0: any real snapshot, even one from an earlier second, replaces it.
        .bind(0_i64)
        .bind(PROVISIONAL_RANK)
        .bind(&envelope.id)
        .execute(&mut **tx)
        .await?;
    }
    customers::recompute_after_event(tx, plans, customer_id, envelope, source).await?;
    Ok(Applied::Processed)
}
