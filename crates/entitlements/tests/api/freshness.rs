//! Revocation through billing's outbox, consistency tokens, and staying correct
//! when the change feed is cut.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::Reason;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::{TcpProxy, signed_headers, stripe_fixture};
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_committed_by_billing_is_served_at_once() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "u_rev",
            email: "rev@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    assert!(
        app.check("u_rev", "scripts.download").await.allowed,
        "cached now"
    );
    let committed = Instant::now();
    app.change(customer, "payment_failed", "free").await;
    eventually("denied", Duration::from_secs(10), || async {
        reason(app.check("u_rev", "scripts.download").await.reason) == Reason::PaymentFailed
    })
    .await;
    eprintln!("revocation visible after {:?}", committed.elapsed());
    // Payment restores it.
    app.change(customer, "active", "pro").await;
    eventually("restored", Duration::from_secs(10), || async {
        app.check("rev@example.com", "scripts.download")
            .await
            .allowed
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_version_waits_for_the_change_or_says_it_could_not() {
    // No relay: the change is committed but never announced on the broker, so only
    // reading the outbox can make the answer that fresh.
    let mut app = spawn_app(Options {
        relay: false,
        ..Options::default()
    })
    .await;
    let customer = app
        .seed(Seed {
            user_id: "u_tok",
            email: "tok@example.com",
            status: "none",
            tier: "free",
            features: &[],
        })
        .await;
    assert!(!app.check("u_tok", "scripts.download").await.allowed);
    app.change(customer, "active", "pro").await;
    let version = app.latest_version().await;
    let answer = app
        .client
        .clone()
        .check(service(pb::CheckRequest {
            subject: "u_tok".into(),
            feature: "scripts.download".into(),
            at_least_version: version,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.allowed, "{answer:?}");
    assert!(answer.version >= version);
    // A version nobody committed: bounded wait, then FAILED_PRECONDITION.
    let started = Instant::now();
    let mut request = service(pb::CheckRequest {
        subject: "u_tok".into(),
        feature: "scripts.download".into(),
        at_least_version: version + 1000,
    });
    request.set_timeout(Duration::from_millis(300));
    let status = app.client.clone().check(request).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("not applied"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_the_broker_resyncs_instead_of_serving_stale_grants() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "u_cut",
            email: "cut@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    // A second replica whose broker connection goes through a proxy the test cuts.
    let proxy = TcpProxy::start(
        &std::env::var("RABBITMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into()),
    )
    .await;
    let replica = app
        .spawn_replica(vec![("AMQP_URL", app.vhost.amqp_url_via(&proxy.addr()))])
        .await;
    let mut client = replica.client.clone();
    let check = |mut client: EntitlementsClient<tonic::transport::Channel>| async move {
        client
            .check(service(pb::CheckRequest {
                subject: "u_cut".into(),
                feature: "scripts.download".into(),
                at_least_version: 0,
            }))
            .await
            .unwrap()
            .into_inner()
    };
    assert!(check(client.clone()).await.allowed);

    proxy.cut();
    app.change(customer, "canceled", "free").await;
    // The announcement is lost for this replica; it reads the outbox instead.
    eventually(
        "revoked on the cut-off replica",
        Duration::from_secs(10),
        || async { reason(check(client.clone()).await.reason) == Reason::Cancelled },
    )
    .await;
    proxy.restore();
    app.change(customer, "active", "pro").await;
    eventually(
        "granted again after reconnecting",
        Duration::from_secs(20),
        || async { check(client.clone()).await.allowed },
    )
    .await;
    let health = client
        .get_entitlements(service(pb::GetEntitlementsRequest {
            subject: "u_cut".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!health.degraded);
    replica.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_and_the_broker_gone_answers_follow_each_feature_s_policy() {
    let mut app = spawn_app(Options::default()).await;
    app.seed(Seed {
        user_id: "u_dark",
        email: "dark@example.com",
        status: "active",
        tier: "pro",
        features: &[],
    })
    .await;
    let pg = TcpProxy::start(&app.db.server_addr()).await;
    let amqp = TcpProxy::start(
        &std::env::var("RABBITMQ_ADDR").unwrap_or_else(|_| "127.0.0.1:5672".into()),
    )
    .await;
    let replica = app
        .spawn_replica(vec![
            ("AMQP_URL", app.vhost.amqp_url_via(&amqp.addr())),
            ("DATABASE_URL", app.db.url_via(&pg.addr())),
        ])
        .await;
    let client = replica.client.clone();
    let check = |feature: &'static str| {
        let mut client = client.clone();
        async move {
            client
                .check(service(pb::CheckRequest {
                    subject: "u_dark".into(),
                    feature: feature.into(),
                    at_least_version: 0,
                }))
                .await
                .unwrap()
                .into_inner()
        }
    };
    assert!(!check("scripts.download").await.degraded);
    pg.cut();
    amqp.cut();
    eventually("degraded", Duration::from_secs(10), || async {
        check("scripts.download").await.degraded
    })
    .await;
    let closed = check("scripts.download").await;
    assert_eq!(
        (closed.allowed, reason(closed.reason)),
        (false, Reason::StoreUnavailable)
    );
    let open = check("docs.read").await;
    assert_eq!((open.allowed, open.degraded), (true, true));
    pg.restore();
    amqp.restore();
    eventually("fresh again", Duration::from_secs(20), || async {
        let answer = check("scripts.download").await;
        answer.allowed && !answer.degraded
    })
    .await;
    replica.stop().await;
    app.stop().await;
}

/// A subscription event in the 2025 shape (as billing's tests build them).
fn subscription_created(customer: &str, created: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("evt_sub_{}", uuid::Uuid::new_v4().simple()), "object": "event",
        "type": "customer.subscription.created", "created": created, "livemode": false,
        "api_version": "2025-03-31.basil",
        "data": { "object": {
            "id": "sub_e2e", "object": "subscription", "customer": customer, "status": "active",
            "cancel_at_period_end": false, "trial_end": null, "canceled_at": null, "ended_at": null,
            "items": { "object": "list", "data": [{
                "id": "si_1", "current_period_start": created, "current_period_end": created + 2_592_000,
                "price": { "id": "price_pro_monthly", "product": "prod_1", "recurring": { "interval": "month" } }
            }]}
        }}
    }))
    .unwrap()
}

/// The real `invoice.payment_failed` payload (pay-rails), for our customer.
fn payment_failed(customer: &str, created: i64) -> Vec<u8> {
    let mut data: Value = serde_json::from_slice(&stripe_fixture(
        "data-only/invoice.payment_failed.data-only.pay-rails.json",
    ))
    .unwrap();
    data["object"]["customer"] = customer.into();
    data["object"]["parent"]["subscription_details"]["subscription"] = "sub_e2e".into();
    data["object"]["created"] = (created - 10).into();
    serde_json::to_vec(&json!({
        "id": format!("evt_fail_{}", uuid::Uuid::new_v4().simple()), "object": "event",
        "type": "invoice.payment_failed", "created": created, "livemode": false,
        "api_version": "2025-03-31.basil", "data": data
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_payment_failed_webhook_through_ingest_and_billing_denies_access() {
    const SECRET: &str = "whsec_e2e_test_secret";
    let mut app = spawn_app(Options {
        relay: false,
        ..Options::default()
    })
    .await;
    // The real ingest and billing, in-process, on the same vhost and database.
    let ingest = tollgate_ingest::Application::build(
        tollgate_ingest::Config::from_env(&tollgate_runtime::Env::from_pairs([
            ("INGEST_ADDR", "127.0.0.1:0".to_string()),
            ("AMQP_URL", app.vhost.amqp_url()),
            ("STRIPE_WEBHOOK_SECRET", SECRET.to_string()),
        ]))
        .unwrap(),
    )
    .unwrap();
    let ingest_url = format!("http://127.0.0.1:{}/webhook", ingest.port());
    assert!(ingest.publisher().wait_ready(Duration::from_secs(10)).await);
    let ingest_handle = ingest.handle();
    let ingest_task = tokio::spawn(ingest.run_until_stopped());
    let billing = tollgate_billing::Application::build(
        tollgate_billing::Config::from_env(&tollgate_runtime::Env::from_pairs([
            ("DATABASE_URL", app.db.url()),
            ("AMQP_URL", app.vhost.amqp_url()),
            ("TOLLGATE_PLANS", plans_path("plans.toml")),
            ("DATABASE_MAX_CONNECTIONS", "4".to_string()),
        ]))
        .unwrap(),
    )
    .await
    .unwrap();
    assert!(billing.wait_consuming(Duration::from_secs(20)).await);
    let billing_stopper = billing.stopper();
    let billing_task = tokio::spawn(billing.run_until_stopped());

    let http = reqwest::Client::new();
    let post = |body: Vec<u8>| {
        let http = http.clone();
        let url = ingest_url.clone();
        async move {
            let response = http
                .post(&url)
                .header("Stripe-Signature", signed_headers(SECRET, &body))
                .header("Content-Type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    let now = tollgate_test_support::unix_now();
    post(subscription_created("cus_e2e", now - 100)).await;
    eventually("subscription applied", Duration::from_secs(30), || async {
        sqlx::query("UPDATE customers SET user_id = 'user_e2e' WHERE stripe_customer_id = 'cus_e2e' AND user_id IS NULL")
            .execute(&app.pool)
            .await
            .unwrap();
        app.check("user_e2e", "scripts.download").await.allowed
    })
    .await;
    let sent = Instant::now();
    post(payment_failed("cus_e2e", now)).await;
    eventually(
        "denied after the failed payment",
        Duration::from_secs(30),
        || async {
            reason(app.check("user_e2e", "scripts.download").await.reason) == Reason::PaymentFailed
        },
    )
    .await;
    eprintln!("webhook POST to denied Check: {:?}", sent.elapsed());

    billing_stopper.stop();
    billing_task.await.unwrap().unwrap();
    ingest_handle.stop(true).await;
    ingest_task.await.unwrap().unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_a_deadline_hears_the_policy_while_postgres_hangs() {
    let mut app = spawn_app(Options::default()).await;
    for user_id in ["u_unread_1", "u_unread_2"] {
        app.seed(Seed {
            user_id,
            email: "unread@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    }
    // A replica whose PostgreSQL stops answering (a partition: connections stay open,
    // nothing comes back); its feed stays live, so only the read of a customer it has
    // never cached needs the database.
    let pg = TcpProxy::start(&app.db.server_addr()).await;
    let replica = app
        .spawn_replica(vec![
            ("DATABASE_URL", app.db.url_via(&pg.addr())),
            ("ENTITLEMENTS_STORE_TIMEOUT_MS", "200".into()),
        ])
        .await;
    let client = replica.client.clone();
    pg.stall();
    // Left to the pool, the read would wait out its 2 s acquire timeout (or forever
    // on a connection already handed out), past this caller's deadline.
    let check = |subject: &'static str, feature: &'static str| {
        let mut client = client.clone();
        async move {
            let mut request = service(pb::CheckRequest {
                subject: subject.into(),
                feature: feature.into(),
                at_least_version: 0,
            });
            request.set_timeout(Duration::from_millis(1500));
            client.check(request).await.map(|r| r.into_inner())
        }
    };
    let closed = check("u_unread_1", "scripts.download")
        .await
        .expect("an answer, not the caller's deadline");
    assert_eq!(
        (closed.allowed, closed.degraded, reason(closed.reason)),
        (false, true, Reason::StoreUnavailable)
    );
    let open = check("u_unread_2", "docs.read")
        .await
        .expect("an answer, not the caller's deadline");
    assert_eq!((open.allowed, open.degraded), (true, true));
    pg.restore();
    eventually(
        "read once PostgreSQL answers again",
        Duration::from_secs(30),
        || async {
            check("u_unread_1", "scripts.download")
                .await
                .is_ok_and(|answer| answer.allowed && !answer.degraded)
        },
    )
    .await;
    replica.stop().await;
    app.stop().await;
}

/// A customer that keeps being asked about is read again in the background in the last
/// tenth of its max age, so its Checks go on being answered from memory. A row edited
/// behind the feed's back (no outbox entry) shows how: only a re-read can see it. No
/// other test in this binary sets a max age short enough to re-read anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_asked_about_often_is_read_again_in_the_background_before_it_expires() {
    let mut app = spawn_app(Options {
        extra_env: vec![("ENTITLEMENTS_CACHE_MAX_AGE_SECS", "1".into())],
        ..Options::default()
    })
    .await;
    let customer = app
        .seed(Seed {
            user_id: "u_reread",
            email: "reread@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    assert_eq!(app.check("u_reread", "docs.read").await.tier, "pro");
    sqlx::query("UPDATE customers SET tier = 'free' WHERE id = $1")
        .bind(customer)
        .execute(&app.pool)
        .await
        .unwrap();
    let refreshed = r#"tollgate_entitlements_cache_refreshes_total{outcome="ok"}"#;
    // Checks every 20 ms: each life of about a second has a 100 ms window to land in.
    eventually(
        "a Check in the refresh window has the customer read again",
        Duration::from_secs(15),
        || async {
            app.check("u_reread", "docs.read").await;
            metric(app.metrics_addr, refreshed).await >= 1.0
        },
    )
    .await;
    eventually(
        "the re-read state answers",
        Duration::from_secs(5),
        || async { app.check("u_reread", "docs.read").await.tier == "free" },
    )
    .await;
    app.stop().await;
}
