//! The real `billing` binary SIGKILLed while events flow: deliveries committed
//! but not yet acknowledged come back after the restart, and must change nothing
//! twice; changes committed but not yet relayed must still be announced.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tollgate_broker::lapin;
use tollgate_events::topology::EVENTS_EXCHANGE;
use tollgate_test_support::stripe_fixture;

use crate::helpers::*;

const EVENTS: usize = 600;
const CREDITS_EACH: i64 = 10;

fn topup(n: usize) -> (String, Vec<u8>) {
    let mut event: Value = serde_json::from_slice(&stripe_fixture(
        "complete/checkout.session.completed.payment_mode.stripe-sync-engine.json",
    ))
    .unwrap();
    let id = format!("evt_crash_{n:04}");
    event["id"] = id.clone().into();
    event["livemode"] = false.into();
    let session = &mut event["data"]["object"];
    session["id"] = format!("cs_crash_{n:04}").into();
    session["customer"] = format!("cus_crash_{}", n % 7).into();
    session["payment_intent"] = format!("pi_crash_{n:04}").into();
    session["metadata"] = json!({ "credits": CREDITS_EACH.to_string() });
    (id, serde_json::to_vec(&event).unwrap())
}

fn start_billing(billing: &TestBilling) -> Child {
    Command::new(env!("CARGO_BIN_EXE_billing"))
        .env_clear()
        .env("DATABASE_URL", billing.database_url())
        .env("AMQP_URL", billing.vhost.amqp_url())
        .env("TOLLGATE_PLANS", plans_path())
        .env("BILLING_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("billing binary starts")
}

async fn count(billing: &TestBilling, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&billing.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_billing_process_killed_mid_stream_loses_nothing_and_doubles_nothing() {
    let billing = spawn_billing(Options {
        instances: 0,
        ..Options::default()
    })
    .await;
    // The schema comes from the first process; wait for it before counting.
    let mut process = start_billing(&billing);
    eventually("migrations applied", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM stripe_events")
            .fetch_one(&billing.pool)
            .await
            .is_ok()
    })
    .await;
    // Events keep arriving while the process dies.
    let publisher = billing.publisher.clone();
    let publishing = tokio::spawn(async move {
        for n in 0..EVENTS {
            let (id, body) = topup(n);
            let properties = lapin::BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_type("checkout.session.completed".into())
                .with_delivery_mode(2);
            publisher
                .publish(
                    EVENTS_EXCHANGE,
                    "checkout.session.completed",
                    &body,
                    properties,
                )
                .await
                .expect("published");
        }
    });
    eventually("some events applied", Duration::from_secs(30), || async {
        count(&billing, "SELECT count(*) FROM stripe_events").await >= 40
    })
    .await;
    process.kill().await.expect("SIGKILL");
    let applied_before_kill = count(&billing, "SELECT count(*) FROM stripe_events").await;

    let mut process = start_billing(&billing);
    publishing.await.unwrap();
    eventually(
        "every event applied after the restart",
        Duration::from_secs(60),
        || async { count(&billing, "SELECT count(*) FROM stripe_events").await == EVENTS as i64 },
    )
    .await;
    eventually(
        "every change announced",
        Duration::from_secs(20),
        || async {
            count(
                &billing,
                "SELECT count(*) FROM entitlement_outbox WHERE published_at IS NULL",
            )
            .await
                == 0
        },
    )
    .await;
    process.kill().await.ok();

    assert!(
        applied_before_kill < EVENTS as i64,
        "the kill happened mid-stream ({applied_before_kill})"
    );
    assert_eq!(
        count(&billing, "SELECT count(*) FROM credit_ledger").await,
        EVENTS as i64
    );
    assert_eq!(
        count(
            &billing,
            "SELECT COALESCE(sum(balance), 0)::bigint FROM credit_balances"
        )
        .await,
        EVENTS as i64 * CREDITS_EACH
    );
    assert_eq!(
        count(
            &billing,
            "SELECT count(*) FROM transactions WHERE kind = 'credit_topup'"
        )
        .await,
        EVENTS as i64
    );
    assert_eq!(
        count(&billing, "SELECT count(*) FROM entitlement_outbox").await,
        EVENTS as i64,
        "one announcement per change"
    );
    assert_eq!(
        count(
            &billing,
            "SELECT count(*) FROM stripe_events WHERE status <> 'processed' OR attempts <> 1"
        )
        .await,
        0
    );
}
