//! Credits: never overdrawn under concurrency, once per key, holds restore.

use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::Reason;
use tonic::Code;

use crate::helpers::*;

async fn consume(
    app: &TestApp,
    subject: &str,
    amount: i64,
    key: &str,
) -> pb::ConsumeCreditsResponse {
    app.client
        .clone()
        .consume_credits(service(pb::ConsumeCreditsRequest {
            subject: subject.into(),
            amount,
            idempotency_key: key.into(),
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn ledger_sum(app: &TestApp, customer: uuid::Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(delta), 0)::bigint FROM credit_ledger WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&app.pool)
    .await
    .unwrap()
}

async fn balance(app: &TestApp, customer: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT balance FROM credit_balances WHERE customer_id = $1")
        .bind(customer)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_consumers_never_overdraw_one_balance() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "spender",
            email: "spender@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 1000).await;
    let mut tasks = Vec::new();
    for caller in 0..64 {
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for call in 0..10 {
                let answer = client
                    .clone()
                    .consume_credits(service(pb::ConsumeCreditsRequest {
                        subject: "spender".into(),
                        amount: 3,
                        idempotency_key: format!("c{caller}-{call}"),
                    }))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(answer.remaining >= 0);
                if answer.ok {
                    ok += 1;
                } else {
                    assert_eq!(reason(answer.reason), Reason::InsufficientCredits);
                }
            }
            ok
        }));
    }
    let mut succeeded = 0;
    for task in tasks {
        succeeded += task.await.unwrap();
    }
    // 640 attempts of 3 on 1000: exactly 333 fit.
    assert_eq!(succeeded, 333);
    assert_eq!(balance(&app, customer).await, 1);
    assert_eq!(
        ledger_sum(&app, customer).await,
        -999,
        "one ledger row per success"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_applies_once() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "retry",
            email: "retry@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 100).await;
    let first = consume(&app, "retry", 30, "order-1").await;
    assert!(first.ok && !first.replayed);
    assert_eq!(first.remaining, 70);
    // Concurrent retries of the same key, and a sequential one.
    let retries: Vec<_> = (0..8)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move {
                client
                    .clone()
                    .consume_credits(service(pb::ConsumeCreditsRequest {
                        subject: "retry@example.com".into(),
                        amount: 30,
                        idempotency_key: "order-1".into(),
                    }))
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
        .collect();
    for retry in retries {
        let answer = retry.await.unwrap();
        assert!(answer.ok && answer.replayed, "{answer:?}");
        assert_eq!(answer.remaining, 70);
    }
    assert_eq!(balance(&app, customer).await, 70);
    let reused = app
        .client
        .clone()
        .consume_credits(service(pb::ConsumeCreditsRequest {
            subject: "retry".into(),
            amount: 31,
            idempotency_key: "order-1".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    let broke = consume(&app, "retry", 71, "order-2").await;
    assert!(!broke.ok);
    assert_eq!(reason(broke.reason), Reason::InsufficientCredits);
    assert_eq!(broke.remaining, 70);
    let unknown = consume(&app, "nobody", 1, "order-3").await;
    assert_eq!(reason(unknown.reason), Reason::UnknownSubject);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_sent_concurrently_spends_once_and_replays_the_rest() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "twice",
            email: "twice@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 100).await;
    // Sent together, most of these land in one batch: the key is new to the ledger
    // and first spent inside that same batch, while reserves share the balance.
    let spends: Vec<_> = (0..12)
        .map(|_| {
            let client = app.client.clone();
            tokio::spawn(async move {
                client
                    .clone()
                    .consume_credits(service(pb::ConsumeCreditsRequest {
                        subject: "twice".into(),
                        amount: 25,
                        idempotency_key: "order-new".into(),
                    }))
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
        .collect();
    let holds: Vec<_> = (0..4)
        .map(|n| {
            let client = app.client.clone();
            tokio::spawn(async move {
                client
                    .clone()
                    .reserve(service(pb::ReserveRequest {
                        subject: "twice".into(),
                        amount: 10,
                        idempotency_key: format!("job-{n}"),
                        ttl_seconds: 60,
                    }))
                    .await
                    .unwrap()
                    .into_inner()
            })
        })
        .collect();
    let mut spent = 0;
    for spend in spends {
        let answer = spend.await.unwrap();
        assert!(answer.ok, "{answer:?}");
        if !answer.replayed {
            spent += 1;
        }
    }
    assert_eq!(spent, 1, "exactly one call spends the key");
    for hold in holds {
        assert!(hold.await.unwrap().ok);
    }
    assert_eq!(balance(&app, customer).await, 100 - 25 - 4 * 10);
    assert_eq!(ledger_sum(&app, customer).await, -25 - 4 * 10);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_then_release_restores_and_settle_spends_only_what_was_used() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "holder",
            email: "holder@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 100).await;
    let mut client = app.client.clone();
    let reserve = |key: &str, amount: i64| {
        service(pb::ReserveRequest {
            subject: "holder".into(),
            amount,
            idempotency_key: key.into(),
            ttl_seconds: 0,
        })
    };
    let held = client
        .reserve(reserve("job-1", 60))
        .await
        .unwrap()
        .into_inner();
    assert!(held.ok);
    assert_eq!(held.remaining, 40);
    assert!(held.expires_at.is_some());
    let again = client
        .reserve(reserve("job-1", 60))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.reservation_id, held.reservation_id);
    let too_much = client
        .reserve(reserve("job-2", 41))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(too_much.reason), Reason::InsufficientCredits);
    assert!(
        !consume(&app, "holder", 41, "spend").await.ok,
        "the hold is not spendable"
    );

    let release = || {
        service(pb::ReleaseRequest {
            subject: "holder".into(),
            reservation_id: held.reservation_id.clone(),
        })
    };
    let released = client.release(release()).await.unwrap().into_inner();
    assert!(released.ok && !released.replayed);
    assert_eq!(released.remaining, 100, "release restores the balance");
    assert!(
        client
            .release(release())
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    let closed = client
        .settle(service(pb::SettleRequest {
            subject: "holder".into(),
            reservation_id: held.reservation_id.clone(),
            amount: 10,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reason(closed.reason), Reason::ReservationClosed);

    let job = client
        .reserve(reserve("job-3", 50))
        .await
        .unwrap()
        .into_inner();
    let settle = |amount: i64| {
        service(pb::SettleRequest {
            subject: "holder".into(),
            reservation_id: job.reservation_id.clone(),
            amount,
        })
    };
    assert_eq!(
        client.settle(settle(51)).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let settled = client.settle(settle(20)).await.unwrap().into_inner();
    assert!(settled.ok);
    assert_eq!(settled.remaining, 80, "30 of the 50 held come back");
    assert!(
        client
            .settle(settle(20))
            .await
            .unwrap()
            .into_inner()
            .replayed
    );
    let other = client
        .release(service(pb::ReleaseRequest {
            subject: "someone-else".into(),
            reservation_id: job.reservation_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    assert_eq!(ledger_sum(&app, customer).await, -20);
    assert_eq!(balance(&app, customer).await, 80);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_holds_are_released_by_themselves() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "expiring",
            email: "exp@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 10).await;
    let held = app
        .client
        .clone()
        .reserve(service(pb::ReserveRequest {
            subject: "expiring".into(),
            amount: 10,
            idempotency_key: "short".into(),
            ttl_seconds: 1,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.remaining, 0);
    eventually(
        "the sweeper released it",
        std::time::Duration::from_secs(30),
        || async { balance(&app, customer).await == 10 },
    )
    .await;
    let status: String = sqlx::query_scalar("SELECT status FROM credit_reservations")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(status, "expired");
    app.stop().await;
}
