//! A rolling restart, as Kubernetes does one: two replicas of ingest, billing and
//! entitlements run as real processes; each replica in turn gets SIGTERM, drains,
//! exits and starts again while signed webhooks keep arriving and Checks keep being
//! asked. Afterwards every event sent is in the ledger exactly once, the state equals
//! what the events imply (credits, subscriptions, invoices; on both entitlements
//! replicas too), and every Check got an answer from one replica or the other.
//!
//! The sender behaves like Stripe: it posts each event to one ingest replica and,
//! on a connection error or any non-2xx answer, posts the same event (same id,
//! signed again) to the other, until one answers 2xx. The checker asks one
//! entitlements replica and, when that fails, the other (a client with two
//! endpoints); a Check neither answered is a failure.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{Service, Stores, authed, channel, event, eventually, post_webhook, topup_session};
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_proto::entitlements::v1::{CheckRequest, GetEntitlementsRequest};
use tollgate_test_support::{invoice_object, subscription_object, unix_now};
use tonic::transport::Channel;

const USERS: u64 = 6;
const CREDITS_PER_TOPUP: i64 = 10;
/// Events sent after the last restart, so the restarted replicas serve traffic too.
const EVENTS_AFTER: u64 = 30;

/// What event number `n` is. Per user, rounds cycle through a credit top-up, the
/// subscription turning active, a paid invoice, the subscription turning past_due.
#[derive(Clone, Debug)]
enum Kind {
    Topup,
    Subscription(&'static str),
    Paid,
}

struct Plan {
    run: String,
    /// `created` of event 0; event n is `base + n`, so snapshots never tie.
    base: i64,
}

impl Plan {
    fn user(n: u64) -> u64 {
        n % USERS
    }

    fn kind(n: u64) -> Kind {
        match (n / USERS) % 4 {
            0 => Kind::Topup,
            1 => Kind::Subscription("active"),
            2 => Kind::Paid,
            _ => Kind::Subscription("past_due"),
        }
    }

    fn user_id(&self, user: u64) -> String {
        format!("user_{}_{user}", self.run)
    }

    fn event_id(&self, n: u64) -> String {
        format!("evt_{}_{n}", self.run)
    }

    fn body(&self, n: u64) -> Vec<u8> {
        let user = Self::user(n);
        let customer = format!("cus_{}_{user}", self.run);
        let subscription = format!("sub_{}_{user}", self.run);
        let created = self.base + n as i64;
        let (event_type, object) = match Self::kind(n) {
            Kind::Topup => (
                "checkout.session.completed",
                topup_session(
                    &format!("cs_{}_{n}", self.run),
                    &customer,
                    &self.user_id(user),
                    CREDITS_PER_TOPUP,
                ),
            ),
            Kind::Subscription(status) => (
                "customer.subscription.updated",
                subscription_object(&subscription, &customer, status, "price_pro_monthly"),
            ),
            Kind::Paid => (
                "invoice.paid",
                invoice_object(
                    &format!("in_{}_{n}", self.run),
                    &customer,
                    &subscription,
                    "paid",
                    created,
                ),
            ),
        };
        event(event_type, &self.event_id(n), created, object)
    }
}

#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    /// Next event number to send.
    next: AtomicU64,
    /// Events ingest answered 2xx for.
    delivered: AtomicU64,
    /// Posts that failed (connection refused or reset, 503 while draining) and were
    /// sent again, to the other replica.
    retried: AtomicU64,
    /// Checks answered by the first replica asked, or by the other one.
    answered_first: AtomicU64,
    answered_by_other: AtomicU64,
    /// Checks neither replica answered, with both errors.
    unanswered: Mutex<Vec<String>>,
}

impl Traffic {
    fn answered(&self) -> u64 {
        self.answered_first.load(Ordering::SeqCst) + self.answered_by_other.load(Ordering::SeqCst)
    }
}

async fn send_until_stopped(plan: Arc<Plan>, traffic: Arc<Traffic>, ingest_ports: [u16; 2]) {
    let client = reqwest::Client::new();
    while !traffic.stop.load(Ordering::SeqCst) {
        let n = traffic.next.fetch_add(1, Ordering::SeqCst);
        let body = plan.body(n);
        let mut replica = (n % 2) as usize;
        let deadline = tokio::time::Instant::now() + support::PATIENCE;
        loop {
            match post_webhook(&client, ingest_ports[replica], &body).await {
                Ok(status) if status.is_success() => break,
                Ok(status) => {
                    // Anything but 2xx is retried, like Stripe; only 503 is expected.
                    assert_eq!(status, 503, "event {n}: ingest answered {status}");
                }
                Err(_) => {}
            }
            traffic.retried.fetch_add(1, Ordering::SeqCst);
            assert!(
                tokio::time::Instant::now() < deadline,
                "event {n} never accepted by either ingest replica"
            );
            replica = 1 - replica;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        traffic.delivered.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn check_until_stopped(plan: Arc<Plan>, traffic: Arc<Traffic>, replicas: [Channel; 2]) {
    let mut i: u64 = 0;
    while !traffic.stop.load(Ordering::SeqCst) {
        let request = || {
            authed(CheckRequest {
                subject: plan.user_id(i % USERS),
                feature: "scripts.download".into(),
                at_least_version: 0,
            })
        };
        let first = (i % 2) as usize;
        match EntitlementsClient::new(replicas[first].clone())
            .check(request())
            .await
        {
            Ok(_) => {
                traffic.answered_first.fetch_add(1, Ordering::SeqCst);
            }
            Err(first_error) => {
                match EntitlementsClient::new(replicas[1 - first].clone())
                    .check(request())
                    .await
                {
                    Ok(_) => {
                        traffic.answered_by_other.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(second_error) => traffic.unanswered.lock().unwrap().push(format!(
                        "check {i}: replica {first}: {first_error}; replica {}: {second_error}",
                        1 - first
                    )),
                }
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What the events sent imply, per user: credits, the last subscription status, paid invoices.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    credits: i64,
    status: Option<&'static str>,
    paid_invoices: i64,
}

fn expected(sent: u64) -> BTreeMap<u64, Expected> {
    let mut users: BTreeMap<u64, Expected> = (0..USERS.min(sent))
        .map(|u| (u, Expected::default()))
        .collect();
    for n in 0..sent {
        let user = users.entry(Plan::user(n)).or_default();
        match Plan::kind(n) {
            Kind::Topup => user.credits += CREDITS_PER_TOPUP,
            // Increasing n means increasing `created`: the latest snapshot wins.
            Kind::Subscription(status) => user.status = Some(status),
            Kind::Paid => user.paid_invoices += 1,
        }
    }
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_loses_nothing_doubles_nothing_and_answers_every_check() {
    let stores = Stores::create().await;
    let mut ingest = [stores.ingest("ingest-0"), stores.ingest("ingest-1")];
    let mut billing = [stores.billing("billing-0"), stores.billing("billing-1")];
    let mut entitlements = [
        stores.entitlements("entitlements-0"),
        stores.entitlements("entitlements-1"),
    ];
    for service in billing
        .iter_mut()
        .chain(&mut ingest)
        .chain(&mut entitlements)
    {
        service.start().await;
    }
    let plan = Arc::new(Plan {
        run: uuid::Uuid::new_v4().simple().to_string()[..10].to_string(),
        base: unix_now() - 86_400,
    });
    let traffic = Arc::new(Traffic::default());
    let ingest_ports = [ingest[0].port, ingest[1].port];
    let senders: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(send_until_stopped(
                plan.clone(),
                traffic.clone(),
                ingest_ports,
            ))
        })
        .collect();
    let checker = tokio::spawn(check_until_stopped(
        plan.clone(),
        traffic.clone(),
        [channel(entitlements[0].port), channel(entitlements[1].port)],
    ));
    let flowing = |events: u64, checks: u64| {
        let traffic = traffic.clone();
        async move {
            eventually("webhooks and checks flowing", || {
                let traffic = traffic.clone();
                async move {
                    traffic.delivered.load(Ordering::SeqCst) >= events
                        && traffic.answered() >= checks
                }
            })
            .await;
        }
    };
    flowing(20, 20).await;

    // One replica at a time, each service in turn, as a rollout does.
    let [ingest_0, ingest_1] = &mut ingest;
    let [billing_0, billing_1] = &mut billing;
    let [entitlements_0, entitlements_1] = &mut entitlements;
    let order: [&mut Service; 6] = [
        ingest_0,
        ingest_1,
        billing_0,
        billing_1,
        entitlements_0,
        entitlements_1,
    ];
    for service in order {
        let (events_before, checks_before) =
            (traffic.delivered.load(Ordering::SeqCst), traffic.answered());
        service.terminate().await;
        service.start().await;
        let (events_during, checks_during) = (
            traffic.delivered.load(Ordering::SeqCst) - events_before,
            traffic.answered() - checks_before,
        );
        eprintln!(
            "restarted {}: {events_during} webhooks accepted and {checks_during} checks answered meanwhile",
            service.name
        );
        // Traffic reaches the restarted replica too before the next one goes.
        flowing(
            traffic.delivered.load(Ordering::SeqCst) + 10,
            traffic.answered() + 10,
        )
        .await;
    }
    flowing(traffic.delivered.load(Ordering::SeqCst) + EVENTS_AFTER, 0).await;
    traffic.stop.store(true, Ordering::SeqCst);
    for sender in senders {
        sender.await.expect("sender");
    }
    checker.await.expect("checker");

    // Every event number handed out was delivered (each sender finishes the one it holds).
    let sent = traffic.next.load(Ordering::SeqCst);
    assert_eq!(traffic.delivered.load(Ordering::SeqCst), sent);
    let unanswered = traffic.unanswered.lock().unwrap().clone();
    assert!(
        unanswered.is_empty(),
        "checks nobody answered:\n{}",
        unanswered.join("\n")
    );
    eprintln!(
        "{sent} events sent ({} posts retried on the other replica); checks answered: {} at once, {} by the other replica",
        traffic.retried.load(Ordering::SeqCst),
        traffic.answered_first.load(Ordering::SeqCst),
        traffic.answered_by_other.load(Ordering::SeqCst),
    );

    // Zero events lost: every id in the ledger once, processed on its first attempt.
    let pool = stores.db.pool().await;
    eventually("billing has processed every event", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM stripe_events WHERE status = 'processed'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
            >= sent as i64
    })
    .await;
    let ledger: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT id, status, attempts FROM stripe_events ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ids: BTreeSet<String> = ledger.iter().map(|(id, _, _)| id.clone()).collect();
    let expected_ids: BTreeSet<String> = (0..sent).map(|n| plan.event_id(n)).collect();
    assert_eq!(
        ids, expected_ids,
        "the ledger holds exactly the events sent"
    );
    for (id, status, attempts) in &ledger {
        assert_eq!((status.as_str(), *attempts), ("processed", 1), "event {id}");
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "no dead letters");

    // Zero double effects: the state is exactly what the events imply.
    let expected = expected(sent);
    let mut stored: BTreeMap<u64, Expected> = BTreeMap::new();
    for (user, expect) in &expected {
        let user_id = plan.user_id(*user);
        let customer = format!("cus_{}_{user}", plan.run);
        let credits: Option<i64> = sqlx::query_scalar(
            "SELECT b.balance FROM credit_balances b JOIN customers c ON c.id = b.customer_id
              WHERE c.user_id = $1",
        )
        .bind(&user_id)
        .fetch_optional(&pool)
        .await
        .unwrap();
        let status: Option<String> = sqlx::query_scalar(
            "SELECT status FROM subscriptions WHERE stripe_subscription_id = $1",
        )
        .bind(format!("sub_{}_{user}", plan.run))
        .fetch_optional(&pool)
        .await
        .unwrap();
        let paid_invoices: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM invoices WHERE stripe_customer_id = $1 AND status = 'paid'",
        )
        .bind(&customer)
        .fetch_one(&pool)
        .await
        .unwrap();
        stored.insert(
            *user,
            Expected {
                credits: credits.unwrap_or(0),
                status: status.map(|s| match s.as_str() {
                    "active" => "active",
                    "past_due" => "past_due",
                    _ => "unexpected",
                }),
                paid_invoices,
            },
        );
        // Entitlements: both replicas, restarted, serve that same state.
        for (replica, service) in entitlements.iter().enumerate() {
            let want_status = expect.status.unwrap_or("").to_string();
            eventually(
                &format!("entitlements-{replica} serves {user_id}'s state"),
                || {
                    let mut client = EntitlementsClient::new(channel(service.port));
                    let subject = user_id.clone();
                    let want_status = want_status.clone();
                    let want_credits = expect.credits;
                    async move {
                        client
                            .get_entitlements(authed(GetEntitlementsRequest {
                                subject,
                                at_least_version: 0,
                            }))
                            .await
                            .is_ok_and(|r| {
                                let r = r.into_inner();
                                r.credit_balance == want_credits
                                    && r.subscription.map(|s| s.status).unwrap_or_default()
                                        == want_status
                            })
                    }
                },
            )
            .await;
        }
    }
    assert_eq!(
        stored, expected,
        "credits, subscription status and paid invoices per user"
    );
    let topups: i64 =
        sqlx::query_scalar("SELECT count(*) FROM credit_ledger WHERE reason = 'topup'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        topups,
        (0..sent)
            .filter(|n| matches!(Plan::kind(*n), Kind::Topup))
            .count() as i64,
        "one ledger row per top-up"
    );

    for service in entitlements
        .iter_mut()
        .chain(&mut ingest)
        .chain(&mut billing)
    {
        service.terminate().await;
    }
}
