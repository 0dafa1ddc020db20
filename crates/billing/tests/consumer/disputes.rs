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
        deliver(
            &billing,
            &[
                subscription_event(
                    "customer.subscription.created",
                    T0,
                    SUB,
                    CUS,
                    "active",
                    "price_pro_monthly",
                ),
                invoice,
            ],
        )
        .await;
        settle(&billing, 2).await;
        deliver(&billing, &[dispute]).await;
        settle(&billing, 3).await;
        let (disputed, dispute_id): (bool, Option<String>) =
            sqlx::query_as("SELECT disputed_at IS NOT NULL, dispute_id FROM customers WHERE stripe_customer_id = $1")
                .bind(CUS)
                .fetch_one(&billing.pool)
                .await
                .unwrap();
        assert!(disputed);
        assert!(dispute_id.unwrap().starts_with("dp_"));
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
    let disputed: bool = sqlx::query_scalar(
        "SELECT disputed_at IS NOT NULL FROM customers WHERE stripe_customer_id = $1",
    )
    .bind(CUS)
    .fetch_one(&billing.pool)
    .await
    .unwrap();
    assert!(disputed);
    billing.stop().await;
}
