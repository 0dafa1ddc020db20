//! Disputes: the customer is flagged; access is revoked only where the plans
//! file's policy says so; a dispute whose payment is not known yet waits.

use std::time::Duration;

use serde_json::Value;
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;
use crate::subscriptions::{T0, access, deliver, settle, subscription_event};

const SUB: &str = "sub_disputed";
const CUS: &str = "cus_disputed";

/// The real `charge.dispute.created` (stripe-sync-engine), and a paid invoice whose
/// charge is the disputed one.
fn dispute_and_its_invoice() -> ((String, Vec<u8>), (String, Vec<u8>)) {
    let dispute: Value = serde_json::from_slice(&stripe_fixture(
        "complete/charge.dispute.created.stripe-sync-engine.json",
    ))
    .unwrap();
    let charge = dispute["data"]["object"]["charge"]
        .as_str()
        .unwrap()
        .to_string();
    let mut invoice: Value = serde_json::from_slice(&stripe_fixture(
        "complete/invoice.paid.stripe-sync-engine.json",
    ))
    .unwrap();
    invoice["id"] = "evt_invoice_disputed".into();
    invoice["created"] = (T0 + 50).into();
    invoice["data"]["object"]["customer"] = CUS.into();
    invoice["data"]["object"]["subscription"] = SUB.into();
    invoice["data"]["object"]["charge"] = charge.into();
    let mut dispute = dispute;
    dispute["id"] = "evt_dispute".into();
    dispute["created"] = (T0 + 100).into();
    (
        ("evt_dispute".into(), serde_json::to_vec(&dispute).unwrap()),
        (
            "evt_invoice_disputed".into(),
            serde_json::to_vec(&invoice).unwrap(),
        ),
    )
}

fn plans_with_revocation() -> tempfile_like::PlansFile {
    tempfile_like::PlansFile::with_policy("revoke_on_dispute = true")
}

mod tempfile_like {
    //! A copy of config/plans.toml with another [policy], removed when dropped.
    pub struct PlansFile(pub std::path::PathBuf);

    impl PlansFile {
        pub fn with_policy(policy: &str) -> Self {
            let text = std::fs::read_to_string(crate::helpers::plans_path()).unwrap();
            let text = text.replace("revoke_on_dispute = false", policy);
            let path =
                std::env::temp_dir().join(format!("plans-{}.toml", uuid::Uuid::new_v4().simple()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for PlansFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_flags_the_customer_and_revokes_only_when_the_policy_says_so() {
    let revoking = plans_with_revocation();
    for (revoke, plans) in [
        (false, plans_path()),
        (true, revoking.0.display().to_string()),
    ] {
        let mut billing = spawn_billing(Options {
            plans_path: Some(plans),
            ..Options::default()
        })
        .await;
        let (dispute, invoice) = dispute_and_its_invoice();
        paid_subscription(&billing, invoice).await;
        deliver(&billing, &[dispute]).await;
        settle(&billing, 3).await;
        let (dispute_id, status) = dispute_row(&billing).await;
        assert!(dispute_id.starts_with("dp_"));
        assert_eq!(status, "warning_needs_response", "the fixture's status");
        let expected = if revoke {
            ("disputed".into(), "free".into())
        } else {
            ("active".into(), "pro".into())
        };
        assert_eq!(
            access(&billing, CUS).await,
            expected,
            "revoke_on_dispute = {revoke}"
        );
        billing.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_that_arrives_before_its_payment_is_retried_until_it_can_be_applied() {
    let mut billing = spawn_billing(Options::default()).await;
    let (dispute, invoice) = dispute_and_its_invoice();
    deliver(&billing, &[dispute]).await;
    eventually(
        "the dispute waits for its payment",
        Duration::from_secs(10),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM stripe_events WHERE id = 'evt_dispute'",
            )
            .fetch_optional(&billing.pool)
            .await
            .unwrap()
            .as_deref()
                == Some("failed")
        },
    )
    .await;
    deliver(&billing, &[invoice]).await;
    // The 1 s, then 5 s retry brings the dispute back once the invoice is known.
    eventually(
        "the dispute applied after its payment",
        Duration::from_secs(20),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM stripe_events WHERE id = 'evt_dispute'",
            )
            .fetch_one(&billing.pool)
            .await
            .unwrap()
                == "processed"
        },
    )
    .await;
    let (dispute_id, _) = dispute_row(&billing).await;
    assert!(dispute_id.starts_with("dp_"));
    billing.stop().await;
}

/// An active Pro subscription and its paid invoice (the payment later disputed).
async fn paid_subscription(billing: &TestBilling, invoice: (String, Vec<u8>)) {
    let subscription = subscription_event(
        "customer.subscription.created",
        T0,
        SUB,
        CUS,
        "active",
        "price_pro_monthly",
    );
    deliver(billing, &[subscription, invoice]).await;
    settle(billing, 2).await;
}

/// The dispute's row: (Stripe id, status), with the customer it belongs to.
async fn dispute_row(billing: &TestBilling) -> (String, String) {
    sqlx::query_as(
        "SELECT d.stripe_dispute_id, d.status FROM disputes d JOIN customers c ON c.id = d.customer_id
          WHERE c.stripe_customer_id = $1",
    )
    .bind(CUS)
    .fetch_one(&billing.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_won_dispute_restores_access_whichever_of_its_events_comes_first() {
    let revoking = plans_with_revocation();
    for closed_first in [false, true] {
        let mut billing = spawn_billing(Options {
            plans_path: Some(revoking.0.display().to_string()),
            ..Options::default()
        })
        .await;
        let (opened, invoice) = dispute_and_its_invoice();
        paid_subscription(&billing, invoice).await;
        let mut closed: Value = serde_json::from_slice(&opened.1).unwrap();
        closed["id"] = "evt_dispute_closed".into();
        closed["type"] = "charge.dispute.closed".into();
        closed["created"] = (T0 + 200).into();
        closed["data"]["object"]["status"] = "won".into();
        let closed = (
            "evt_dispute_closed".to_string(),
            serde_json::to_vec(&closed).unwrap(),
        );
        if closed_first {
            deliver(&billing, &[closed, opened]).await;
        } else {
            deliver(&billing, &[opened]).await;
            settle(&billing, 3).await;
            assert_eq!(
                access(&billing, CUS).await,
                ("disputed".into(), "free".into())
            );
            deliver(&billing, &[closed]).await;
        }
        settle(&billing, 4).await;
        assert_eq!(
            dispute_row(&billing).await.1,
            "won",
            "closed first: {closed_first}"
        );
        assert_eq!(
            access(&billing, CUS).await,
            ("active".into(), "pro".into()),
            "closed first: {closed_first}"
        );
        billing.stop().await;
    }
}

/// `invoice_payment.paid` as API 2025-03-31 and later send it; the object follows
/// the example on Stripe's API reference ("The Invoice Payment object",
/// docs.stripe.com/api/invoice-payment/object), with our ids.
fn invoice_payment_paid(invoice: &str, payment_intent: &str) -> (String, Vec<u8>) {
    let event = serde_json::json!({
        "id": "evt_invoice_payment_paid", "object": "event", "type": "invoice_payment.paid",
        "api_version": "2025-03-31.basil", "created": T0 + 60, "livemode": false,
        "data": { "object": {
            "id": "inpay_1M3USa2eZvKYlo2CBjuwbq0N", "object": "invoice_payment",
            "amount_paid": 2000, "amount_requested": 2000, "created": T0 + 60, "currency": "usd",
            "invoice": invoice, "is_default": true, "livemode": false,
            "payment": { "type": "payment_intent", "payment_intent": payment_intent },
            "status": "paid",
            "status_transitions": { "canceled_at": null, "paid_at": T0 + 60 }
        }}
    });
    (
        "evt_invoice_payment_paid".into(),
        serde_json::to_vec(&event).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispute_on_a_2025_invoice_payment_finds_its_customer_through_the_invoice_payment() {
    let revoking = plans_with_revocation();
    let mut billing = spawn_billing(Options {
        plans_path: Some(revoking.0.display().to_string()),
        ..Options::default()
    })
    .await;
    let (dispute, invoice) = dispute_and_its_invoice();
    // The 2025 invoice names no payment at all.
    let mut invoice_json: Value = serde_json::from_slice(&invoice.1).unwrap();
    let object = invoice_json["data"]["object"].as_object_mut().unwrap();
    object.remove("charge");
    object.remove("payment_intent");
    let invoice_id = object["id"].as_str().unwrap().to_string();
    let invoice = (invoice.0, serde_json::to_vec(&invoice_json).unwrap());
    paid_subscription(&billing, invoice).await;
    let dispute_json: Value = serde_json::from_slice(&dispute.1).unwrap();
    let payment_intent = dispute_json["data"]["object"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    deliver(
        &billing,
        &[invoice_payment_paid(&invoice_id, &payment_intent)],
    )
    .await;
    settle(&billing, 3).await;
    deliver(&billing, &[dispute]).await;
    settle(&billing, 4).await;
    let (dispute_id, _) = dispute_row(&billing).await;
    assert!(dispute_id.starts_with("dp_"));
    assert_eq!(
        access(&billing, CUS).await,
        ("disputed".into(), "free".into())
    );
    let status: String =
        sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = 'evt_dispute'")
            .fetch_one(&billing.pool)
            .await
            .unwrap();
    assert_eq!(status, "processed", "applied at the first attempt");
    billing.stop().await;
}
