//! Credit packs: top-ups from payment-mode checkouts, clawbacks on refunds.
//! Every balance change is a ledger row with a unique idempotency key, so the
//! balance is the same whatever order (and however often) events arrive.

use tollgate_events::EventEnvelope;

use crate::customers::{self, Tx};
use crate::ledger::Applied;
use crate::process::ProcessError;
use crate::stripe::{Charge, CheckoutSession};

/// Adds a ledger row unless its key exists, and moves the balance with it.
/// Returns whether it was added.
#[allow(clippy::too_many_arguments)]
pub async fn add_entry(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    delta: i64,
    reason: &str,
    idempotency_key: &str,
    stripe_object_id: Option<&str>,
    payment_intent: Option<&str>,
    stripe_event_id: Option<&str>,
) -> Result<bool, ProcessError> {
    let inserted = sqlx::query(
        "INSERT INTO credit_ledger (customer_id, delta, reason, idempotency_key, stripe_object_id, payment_intent, stripe_event_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(customer_id)
    .bind(delta)
    .bind(reason)
    .bind(idempotency_key)
    .bind(stripe_object_id)
    .bind(payment_intent)
    .bind(stripe_event_id)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query(
            "INSERT INTO credit_balances (customer_id, balance) VALUES ($1, $2)
             ON CONFLICT (customer_id) DO UPDATE SET balance = credit_balances.balance + EXCLUDED.balance,
                                                     updated_at = now()",
        )
        .bind(customer_id)
        .bind(delta)
        .execute(&mut **tx)
        .await?;
        crate::outbox::emit(tx, customer_id, "credits").await?;
    }
    Ok(inserted)
}

/// A paid payment-mode checkout with `metadata.credits` adds that many credits.
pub async fn topup(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    session: &CheckoutSession,
) -> Result<Applied, ProcessError> {
    let Some(credits) = session.credits() else {
        return Ok(Applied::Ignored);
    };
    if !matches!(
        session.payment_status.as_deref(),
        Some("paid" | "no_payment_required")
    ) {
        // Delayed payment methods: credits come with checkout.session.async_payment_succeeded.
        return Ok(Applied::Ignored);
    }
    let Some(stripe_customer) = session.customer.as_ref() else {
        return Err(ProcessError::Poison(format!(
            "top-up checkout {} has no customer",
            session.id
        )));
    };
    let customer_id = customers::lock_or_create(tx, stripe_customer.id()).await?;
    customers::link_user(tx, customer_id, session.user_id(), session.email()).await?;
    let payment_intent = session.payment_intent.as_ref().map(|p| p.id());
    add_entry(
        tx,
        customer_id,
        credits,
        "topup",
        &format!("topup:{}", session.id),
        Some(&session.id),
        payment_intent,
        Some(&envelope.id),
    )
    .await?;
    if let Some(payment_intent) = payment_intent {
        // Refunds of this payment that arrived before the top-up did.
        let refunds: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT stripe_object_id, charge_amount, amount FROM transactions
              WHERE kind = 'refund' AND payment_intent = $1 AND charge_amount > 0",
        )
        .bind(payment_intent)
        .fetch_all(&mut **tx)
        .await?;
        for (charge_id, charge_amount, refunded) in refunds {
            claw_back(
                tx,
                customer_id,
                &charge_id,
                payment_intent,
                charge_amount,
                refunded,
                &envelope.id,
            )
            .await?;
        }
    }
    sqlx::query(
        "INSERT INTO transactions (customer_id, kind, status, currency, amount, stripe_object_id, description, occurred_at)
         VALUES ($1, 'credit_topup', 'succeeded', lower($2), $3, $4, $5, to_timestamp($6))
         ON CONFLICT (kind, stripe_object_id) DO NOTHING",
    )
    .bind(customer_id)
    .bind(&session.currency)
    .bind(session.amount_total)
    .bind(&session.id)
    .bind(format!("{credits} credits"))
    .bind(envelope.created)
    .execute(&mut **tx)
    .await?;
    Ok(Applied::Processed)
}

/// `charge.refunded` (cumulative `amount_refunded`): a refund transaction, and a
/// clawback of the credits that charge bought, in proportion to the refunded share.
pub async fn refund(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    charge: &Charge,
) -> Result<Applied, ProcessError> {
    let payment_intent = charge.payment_intent.as_ref().map(|p| p.id().to_string());
    let stripe_customer = match charge.customer.as_ref() {
        Some(c) => Some(c.id().to_string()),
        None => match &payment_intent {
            Some(pi) => sqlx::query_scalar(
                "SELECT c.stripe_customer_id FROM credit_ledger l JOIN customers c ON c.id = l.customer_id
                  WHERE l.payment_intent = $1 LIMIT 1",
            )
            .bind(pi)
            .fetch_optional(&mut **tx)
            .await?
            .flatten(),
            None => None,
        },
    };
    let Some(stripe_customer) = stripe_customer else {
        return Ok(Applied::Ignored);
    };
    let customer_id = customers::lock_or_create(tx, &stripe_customer).await?;

    // amount_refunded only grows: keep the largest seen.
    let refunded: i64 = sqlx::query_scalar(
        "INSERT INTO transactions (customer_id, kind, status, currency, amount, stripe_object_id, description,
                                   occurred_at, payment_intent, charge_amount)
         VALUES ($1, 'refund', 'succeeded', lower($2), $3, $4, 'Refund', to_timestamp($5), $6, $7)
         ON CONFLICT (kind, stripe_object_id) DO UPDATE SET amount = GREATEST(transactions.amount, EXCLUDED.amount),
                                                            payment_intent = COALESCE(transactions.payment_intent,
                                                                                      EXCLUDED.payment_intent),
                                                            charge_amount = EXCLUDED.charge_amount,
                                                            updated_at = now()
         RETURNING amount",
    )
    .bind(customer_id)
    .bind(&charge.currency)
    .bind(charge.amount_refunded)
    .bind(&charge.id)
    .bind(envelope.created)
    .bind(payment_intent.as_deref())
    .bind(charge.amount)
    .fetch_one(&mut **tx)
    .await?;
    if let Some(payment_intent) = payment_intent.as_deref() {
        claw_back(
            tx,
            customer_id,
            &charge.id,
            payment_intent,
            charge.amount,
            refunded,
            &envelope.id,
        )
        .await?;
    }
    Ok(Applied::Processed)
}

/// Brings the clawback for one refunded charge up to the refunded share of the
/// credits its payment bought. Called by the refund and by the top-up, so the
/// result is the same whichever of the two arrives first.
async fn claw_back(
    tx: &mut Tx,
    customer_id: uuid::Uuid,
    charge_id: &str,
    payment_intent: &str,
    charge_amount: i64,
    refunded: i64,
    stripe_event_id: &str,
) -> Result<(), ProcessError> {
    if charge_amount <= 0 {
        return Ok(());
    }
    let bought: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(delta), 0)::bigint FROM credit_ledger WHERE payment_intent = $1 AND reason = 'topup'",
    )
    .bind(payment_intent)
    .fetch_one(&mut **tx)
    .await?;
    let clawed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(-sum(delta), 0)::bigint FROM credit_ledger
          WHERE stripe_object_id = $1 AND reason = 'refund_clawback'",
    )
    .bind(charge_id)
    .fetch_one(&mut **tx)
    .await?;
    let refunded = refunded.clamp(0, charge_amount);
    let target =
        i64::try_from(i128::from(bought) * i128::from(refunded) / i128::from(charge_amount))
            .unwrap_or(bought);
    if target > clawed {
        add_entry(
            tx,
            customer_id,
            -(target - clawed),
            "refund_clawback",
            &format!("clawback:{charge_id}:{refunded}"),
            Some(charge_id),
            Some(payment_intent),
            Some(stripe_event_id),
        )
        .await?;
    }
    Ok(())
}

pub async fn checkout_payment(
    tx: &mut Tx,
    envelope: &EventEnvelope,
    session: &CheckoutSession,
) -> Result<Applied, ProcessError> {
    if session.mode.as_deref() != Some("payment") {
        return Ok(Applied::Ignored);
    }
    topup(tx, envelope, session).await
}
