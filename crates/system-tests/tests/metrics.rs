//! Each service's `/metrics` after real traffic, read from the real binaries: every
//! process has its own Prometheus recorder, so the values are exact (in-process tests
//! share one recorder per test binary and could only assert that a series exists).

mod support;

use support::{Stores, authed, event, eventually, post_webhook, series, topup_session};
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_proto::entitlements::v1::{
    CheckRequest, ConsumeCreditsRequest, GetEntitlementsRequest,
};
use tollgate_test_support::{invoice_object, subscription_object, unix_now};

fn run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

async fn processed_events(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM stripe_events WHERE status = 'processed'")
        .fetch_one(pool)
        .await
        .expect("counting events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_billing_count_payments_conversions_and_cancellations_once() {
    let stores = Stores::create().await;
    let mut billing = stores.billing("billing");
    let mut ingest = stores.ingest("ingest");
    billing.start().await;
    ingest.start().await;
    let pool = stores.db.pool().await;
    let client = reqwest::Client::new();
    let run = run_id();
    let (cus_a, cus_b) = (format!("cus_{run}_a"), format!("cus_{run}_b"));
    let (sub_a, sub_b) = (format!("sub_{run}_a"), format!("sub_{run}_b"));
    let now = unix_now();
    let paid = event(
        "invoice.paid",
        &format!("evt_{run}_paid"),
        now - 9,
        invoice_object(&format!("in_{run}_a"), &cus_a, &sub_a, "paid", now - 9),
    );
    let events = [
        event(
            "customer.subscription.created",
            &format!("evt_{run}_sub_a"),
            now - 10,
            subscription_object(&sub_a, &cus_a, "active", "price_pro_monthly"),
        ),
        event(
            "customer.subscription.created",
            &format!("evt_{run}_sub_b"),
            now - 10,
            subscription_object(&sub_b, &cus_b, "active", "price_pro_monthly"),
        ),
        paid.clone(),
        event(
            "invoice.payment_failed",
            &format!("evt_{run}_failed"),
            now - 9,
            invoice_object(&format!("in_{run}_b"), &cus_b, &sub_b, "open", now - 9),
        ),
        event(
            "checkout.session.completed",
            &format!("evt_{run}_topup"),
            now - 8,
            topup_session(&format!("cs_{run}"), &cus_a, &format!("user_{run}_a"), 50),
        ),
        event(
            "customer.subscription.deleted",
            &format!("evt_{run}_sub_b_deleted"),
            now - 5,
            subscription_object(&sub_b, &cus_b, "canceled", "price_pro_monthly"),
        ),
    ];
    for body in &events {
        assert_eq!(post_webhook(&client, ingest.port, body).await.unwrap(), 200);
    }
    eventually("the six events are processed", || async {
        processed_events(&pool).await == 6
    })
    .await;
    // Stripe delivering invoice.paid again: a duplicate, not a second payment.
    assert_eq!(
        post_webhook(&client, ingest.port, &paid).await.unwrap(),
        200
    );
    eventually("the duplicate is seen", || async {
        series(
            &billing.metrics().await,
            r#"tollgate_billing_events_total{outcome="duplicate"}"#,
        ) == Some(1.0)
    })
    .await;
    // And a webhook with a forged signature, refused by ingest.
    let forged = client
        .post(format!("http://127.0.0.1:{}/webhook", ingest.port))
        .header(
            "stripe-signature",
            tollgate_test_support::signed_headers("whsec_someone_else", &paid),
        )
        .body(paid.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    // Gauges are refreshed every second (BILLING_GAUGES_INTERVAL_SECS=1).
    eventually(
        "the gauges show one active pro subscription and an empty queue",
        || async {
            let metrics = billing.metrics().await;
            series(
                &metrics,
                r#"tollgate_billing_active_subscriptions{tier="pro"}"#,
            ) == Some(1.0)
                && series(
                    &metrics,
                    r#"tollgate_billing_queue_messages{queue="tollgate.billing.events"}"#,
                ) == Some(0.0)
                && series(
                    &metrics,
                    r#"tollgate_billing_queue_consumers{queue="tollgate.billing.events"}"#,
                ) == Some(1.0)
        },
    )
    .await;
    let metrics = billing.metrics().await;
    for (name, value) in [
        (
            r#"tollgate_billing_payments_total{outcome="succeeded"}"#,
            1.0,
        ),
        (r#"tollgate_billing_payments_total{outcome="failed"}"#, 1.0),
        (
            r#"tollgate_billing_checkout_conversions_total{mode="payment"}"#,
            1.0,
        ),
        ("tollgate_billing_cancellations_total", 1.0),
        (r#"tollgate_billing_events_total{outcome="processed"}"#, 6.0),
        (r#"tollgate_billing_events_total{outcome="duplicate"}"#, 1.0),
        (
            r#"tollgate_billing_queue_messages{queue="tollgate.dead-letter"}"#,
            0.0,
        ),
    ] {
        assert_eq!(series(&metrics, name), Some(value), "{name} in\n{metrics}");
    }
    let transactions: f64 = ["single", "batch"]
        .iter()
        .filter_map(|kind| {
            series(
                &metrics,
                &format!(r#"tollgate_billing_transaction_seconds_count{{kind="{kind}"}}"#),
            )
        })
        .sum();
    assert!(transactions >= 1.0, "transactions timed:\n{metrics}");

    let metrics = ingest.metrics().await;
    for (name, value) in [
        (r#"tollgate_ingest_webhooks_total{outcome="accepted"}"#, 7.0),
        (
            r#"tollgate_ingest_signature_failures_total{reason="mismatch"}"#,
            1.0,
        ),
        (
            r#"tollgate_ingest_request_duration_seconds_count{outcome="accepted"}"#,
            7.0,
        ),
    ] {
        assert_eq!(series(&metrics, name), Some(value), "{name} in\n{metrics}");
    }
    assert!(
        series(&metrics, "tollgate_broker_publish_confirm_seconds_count") == Some(7.0),
        "confirm latency recorded per publish:\n{metrics}"
    );
    ingest.terminate().await;
    billing.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlements_counts_credits_consumed_once_and_times_checks() {
    let stores = Stores::create().await;
    let mut billing = stores.billing("billing");
    let mut ingest = stores.ingest("ingest");
    let mut entitlements = stores.entitlements("entitlements");
    billing.start().await;
    ingest.start().await;
    entitlements.start().await;
    let client = reqwest::Client::new();
    let run = run_id();
    let user = format!("user_{run}");
    let topup = event(
        "checkout.session.completed",
        &format!("evt_{run}_topup"),
        unix_now(),
        topup_session(&format!("cs_{run}"), &format!("cus_{run}"), &user, 100),
    );
    assert_eq!(
        post_webhook(&client, ingest.port, &topup).await.unwrap(),
        200
    );
    let mut grpc = EntitlementsClient::new(support::channel(entitlements.port));
    eventually("entitlements sees the 100 credits", || {
        let mut grpc = grpc.clone();
        let subject = user.clone();
        async move {
            grpc.get_entitlements(authed(GetEntitlementsRequest {
                subject,
                at_least_version: 0,
            }))
            .await
            .is_ok_and(|r| r.into_inner().credit_balance == 100)
        }
    })
    .await;
    let consume = |amount: i64, key: &str| ConsumeCreditsRequest {
        subject: user.clone(),
        amount,
        idempotency_key: key.into(),
    };
    let first = grpc
        .consume_credits(authed(consume(30, "k1")))
        .await
        .unwrap()
        .into_inner();
    assert!(first.ok && !first.replayed);
    let replay = grpc
        .consume_credits(authed(consume(30, "k1")))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.ok && replay.replayed, "same key: no second effect");
    let second = grpc
        .consume_credits(authed(consume(20, "k2")))
        .await
        .unwrap()
        .into_inner();
    assert!(second.ok && second.remaining == 50);
    let too_much = grpc
        .consume_credits(authed(consume(1000, "k3")))
        .await
        .unwrap()
        .into_inner();
    assert!(!too_much.ok, "never overdrawn");
    for _ in 0..3 {
        grpc.check(authed(CheckRequest {
            subject: user.clone(),
            feature: "docs.read".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap();
    }

    let metrics = entitlements.metrics().await;
    assert_eq!(
        series(
            &metrics,
            r#"tollgate_entitlements_credits_consumed_total{operation="consume"}"#
        ),
        Some(50.0),
        "30 + 20: the replay and the refused call spent nothing\n{metrics}"
    );
    assert_eq!(
        series(
            &metrics,
            r#"tollgate_entitlements_rpc_seconds_count{rpc="ConsumeCredits",outcome="ok"}"#
        ),
        Some(4.0),
        "{metrics}"
    );
    // Readiness probes were Checks too: at least the three here.
    assert!(
        series(
            &metrics,
            r#"tollgate_entitlements_rpc_seconds_count{rpc="Check",outcome="ok"}"#
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    assert!(
        series(
            &metrics,
            r#"tollgate_entitlements_cache_total{result="hit"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "cache hits counted:\n{metrics}"
    );
    entitlements.terminate().await;
    ingest.terminate().await;
    billing.terminate().await;
}
