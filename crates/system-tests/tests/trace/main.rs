//! One OpenTelemetry trace per webhook, across the real processes: ingest's HTTP
//! span and its AMQP publish, billing's consume, transaction and outbox publish,
//! and entitlements' cache invalidation, exported by each service over OTLP/gRPC
//! to a real receiver in the test, and joined by the `traceparent` the message
//! headers and the outbox row carry.

mod collector;
mod services;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::Value;
use sqlx::PgPool;
use tollgate_test_support::{TestDatabase, TestRedis, TestVhost, fresh_event, signed_headers};

use collector::{Collector, Recorded};
use services::Service;

const SECRET: &str = "whsec_trace_test";
const SERVICE_TOKEN: &str = "trace-test-service-token";
const SUBSCRIPTION_CREATED: &str = "complete/customer.subscription.created.stripe-sync-engine.json";
/// Generous: nothing here is timed, these only bound a failure.
const STARTUP: Duration = Duration::from_secs(60);
const ARRIVAL: Duration = Duration::from_secs(60);

fn plans_path() -> String {
    format!(
        "{}/config/plans.toml",
        tollgate_test_support::workspace_root().display()
    )
}

/// The broker, database and Redis of one test, and the receiver every service exports to.
struct Stack {
    collector: Collector,
    db: TestDatabase,
    vhost: TestVhost,
    redis: TestRedis,
    pool: PgPool,
    client: reqwest::Client,
}

impl Stack {
    async fn new() -> Self {
        let collector = Collector::start().await;
        let db = TestDatabase::create().await;
        let pool = db.pool().await;
        Self {
            collector,
            db,
            vhost: TestVhost::create(),
            redis: TestRedis::create(),
            pool,
            client: reqwest::Client::new(),
        }
    }

    /// Export promptly (the default batch delay is 5 s).
    fn telemetry(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                self.collector.endpoint.clone(),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    /// Billing applies the migrations, then consumes.
    async fn billing(&self, extra: &[(&'static str, String)]) -> Service {
        let mut env = self.telemetry();
        env.extend([
            ("DATABASE_URL", self.db.url()),
            ("AMQP_URL", self.vhost.amqp_url()),
            ("TOLLGATE_PLANS", plans_path()),
            ("BILLING_ADDR", "127.0.0.1:0".into()),
        ]);
        env.extend_from_slice(extra);
        let mut billing = Service::start("billing", env!("CARGO_BIN_EXE_system-billing"), &env);
        billing.wait_for_log("billing consuming", STARTUP).await;
        billing
    }

    /// Entitlements, once its change feed is bound and caught up.
    async fn entitlements(&self) -> Service {
        let mut env = self.telemetry();
        env.extend([
            ("DATABASE_URL", self.db.url()),
            ("AMQP_URL", self.vhost.amqp_url()),
            ("REDIS_URL", self.redis.url()),
            ("ENTITLEMENTS_REDIS_PREFIX", self.redis.prefix().into()),
            ("ENTITLEMENTS_SERVICE_TOKENS", SERVICE_TOKEN.into()),
            ("ENTITLEMENTS_ADDR", "127.0.0.1:0".into()),
            ("ENTITLEMENTS_METRICS_ADDR", "127.0.0.1:0".into()),
            ("TOLLGATE_PLANS", plans_path()),
        ]);
        let mut entitlements = Service::start(
            "entitlements",
            env!("CARGO_BIN_EXE_system-entitlements"),
            &env,
        );
        entitlements.wait_for_log("change feed live", STARTUP).await;
        entitlements
    }

    /// Ingest and its webhook URL, once it is ready (connected to the broker).
    async fn ingest(&self) -> (Service, String) {
        let mut env = self.telemetry();
        env.extend([
            ("AMQP_URL", self.vhost.amqp_url()),
            ("STRIPE_WEBHOOK_SECRET", SECRET.into()),
            ("INGEST_ADDR", "127.0.0.1:0".into()),
            ("INGEST_WORKERS", "1".into()),
        ]);
        let mut ingest = Service::start("ingest", env!("CARGO_BIN_EXE_system-ingest"), &env);
        let listening = ingest.wait_for_log("ingest listening", STARTUP).await;
        let base = format!("http://127.0.0.1:{}", listening["port"].as_u64().unwrap());
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            let ready = self.client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == reqwest::StatusCode::OK) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "ingest never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (ingest, format!("{base}/webhook"))
    }

    /// Posts a signed event to ingest; it answers 200 once the broker has it.
    async fn post(&self, webhook_url: &str, body: &[u8]) {
        let response = self
            .client
            .post(webhook_url)
            .header("Stripe-Signature", signed_headers(SECRET, body))
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("ingest answers");
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
    }

    /// Waits for billing to have given `stripe_customer` access; returns (customer id,
    /// status, tier) and the ids of the outbox rows announcing it.
    async fn access_of(
        &self,
        stripe_customer: &str,
    ) -> ((uuid::Uuid, String, Option<String>), Vec<i64>) {
        let deadline = tokio::time::Instant::now() + ARRIVAL;
        loop {
            let customer: Option<(uuid::Uuid, String, Option<String>)> = sqlx::query_as(
                "SELECT id, access_status, tier FROM customers WHERE stripe_customer_id = $1",
            )
            .bind(stripe_customer)
            .fetch_optional(&self.pool)
            .await
            .unwrap();
            if let Some(customer) = customer {
                let outbox: Vec<i64> = sqlx::query_scalar(
                    "SELECT id FROM entitlement_outbox WHERE customer_id = $1 ORDER BY id",
                )
                .bind(customer.0)
                .fetch_all(&self.pool)
                .await
                .unwrap();
                return (customer, outbox);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "billing never applied the event for {stripe_customer}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stripe's own `customer.subscription.created` (a fresh event id), made about
/// `customer` on a price that grants the pro tier: applying it changes access.
fn subscription_created(customer: &str) -> (String, Vec<u8>) {
    let (id, body) = fresh_event(SUBSCRIPTION_CREATED, false);
    let mut event: Value = serde_json::from_slice(&body).unwrap();
    let subscription = &mut event["data"]["object"];
    subscription["id"] = format!("sub_{customer}").into();
    subscription["customer"] = customer.into();
    for item in subscription["items"]["data"].as_array_mut().unwrap() {
        item["price"]["id"] = "price_pro_monthly".into();
        item["plan"]["id"] = "price_pro_monthly".into();
    }
    (id, serde_json::to_vec(&event).unwrap())
}

fn unique_customer() -> String {
    format!(
        "cus_trace_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The one span matching `pick`; panics (listing them) if there are none or several.
fn one<'a>(spans: &'a [Recorded], what: &str, pick: impl Fn(&Recorded) -> bool) -> &'a Recorded {
    let found: Vec<&Recorded> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what}: {found:#?}");
    found[0]
}

fn assert_span(span: &Recorded, service: &str, kind: SpanKind, parent: Option<&Recorded>) {
    assert_eq!(span.service, service, "service.name of {span:#?}");
    assert_eq!(span.kind, kind, "kind of {span:#?}");
    match parent {
        Some(parent) => {
            assert_eq!(
                span.trace_id, parent.trace_id,
                "{} is in the trace of {}",
                span.name, parent.name
            );
            assert_eq!(
                span.parent_span_id, parent.span_id,
                "{}'s parent is {} ({span:#?} under {parent:#?})",
                span.name, parent.name
            );
        }
        None => assert_eq!(
            span.parent_span_id, "",
            "{} is a root: {span:#?}",
            span.name
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_webhook_is_one_connected_trace_across_ingest_billing_and_entitlements() {
    let stack = Stack::new().await;
    let _billing = stack.billing(&[]).await;
    let _entitlements = stack.entitlements().await;
    let (_ingest, webhook_url) = stack.ingest().await;

    let stripe_customer = unique_customer();
    let (event_id, body) = subscription_created(&stripe_customer);
    stack.post(&webhook_url, &body).await;

    // The webhook changed access, and billing announced it through the outbox.
    let ((customer_id, status, tier), outbox) = stack.access_of(&stripe_customer).await;
    assert_eq!((status.as_str(), tier.as_deref()), ("active", Some("pro")));
    assert!(!outbox.is_empty(), "the access change is in the outbox");
    let versions: HashSet<String> = outbox.iter().map(i64::to_string).collect();
    let customer = customer_id.to_string();

    // Every span this webhook caused, found by what it is about (not by trace).
    let is_webhook =
        |s: &Recorded| s.name == "webhook" && s.attribute("event_id") == Some(event_id.as_str());
    let is_publish = |s: &Recorded| {
        s.name == "amqp_publish" && s.attribute("messaging.message.id") == Some(event_id.as_str())
    };
    let is_consume = |s: &Recorded| {
        s.name == "billing_event" && s.attribute("event_id") == Some(event_id.as_str())
    };
    let is_transaction = |s: &Recorded| s.name == "billing_transaction";
    let is_relay = |s: &Recorded| {
        s.name == "outbox_publish" && s.attribute("version").is_some_and(|v| versions.contains(v))
    };
    let is_invalidation = |s: &Recorded| {
        s.name == "entitlements_invalidate"
            && s.attribute("customer_id") == Some(customer.as_str())
            && s.attribute("version").is_some_and(|v| versions.contains(v))
    };
    let spans = stack
        .collector
        .wait_for(
            "every span of the webhook from all three services",
            ARRIVAL,
            |spans| {
                let relayed = spans.iter().filter(|s| is_relay(s)).count();
                let invalidated = spans.iter().filter(|s| is_invalidation(s)).count();
                (spans.iter().any(is_webhook)
                    && spans.iter().any(is_publish)
                    && spans.iter().any(is_consume)
                    && spans.iter().any(is_transaction)
                    && relayed == outbox.len()
                    && invalidated == outbox.len())
                .then(|| spans.to_vec())
            },
        )
        .await;

    let webhook = one(&spans, "ingest HTTP span", is_webhook);
    let publish = one(&spans, "AMQP publish span", is_publish);
    let consume = one(&spans, "billing consume span", is_consume);
    // This billing process applied nothing else.
    let transaction = one(&spans, "billing transaction span", is_transaction);
    assert_span(webhook, "ingest", SpanKind::Server, None);
    assert_span(publish, "ingest", SpanKind::Producer, Some(webhook));
    assert_span(consume, "billing", SpanKind::Consumer, Some(publish));
    assert_span(transaction, "billing", SpanKind::Internal, Some(consume));
    assert_eq!(transaction.attribute("size"), Some("1"));
    for version in &versions {
        let relay = one(&spans, "outbox publish span", |s| {
            s.name == "outbox_publish" && s.attribute("version") == Some(version.as_str())
        });
        assert_span(relay, "billing", SpanKind::Producer, Some(transaction));
        let invalidation = one(&spans, "entitlements invalidation span", |s| {
            is_invalidation(s) && s.attribute("version") == Some(version.as_str())
        });
        assert_span(
            invalidation,
            "entitlements",
            SpanKind::Consumer,
            Some(relay),
        );
        assert!(
            matches!(
                invalidation.attribute("outcome"),
                Some("inserted" | "updated")
            ),
            "entitlements applied the change: {invalidation:#?}"
        );
    }

    // The outbox rows carry the context of the transaction that wrote them.
    let traceparents: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT traceparent FROM entitlement_outbox WHERE customer_id = $1 ORDER BY id",
    )
    .bind(customer_id)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    for traceparent in traceparents {
        assert_eq!(
            traceparent,
            Some(format!(
                "00-{}-{}-01",
                transaction.trace_id, transaction.span_id
            ))
        );
    }

    // ONE trace: everything exported under its id is connected to the one root.
    let trace: Vec<&Recorded> = spans
        .iter()
        .filter(|s| s.trace_id == webhook.trace_id)
        .collect();
    let ids: HashSet<&str> = trace.iter().map(|s| s.span_id.as_str()).collect();
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_str()),
            "{} hangs off a span missing from the trace: {span:#?}",
            span.name
        );
    }
    let roots: Vec<&&Recorded> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {roots:#?}");
    let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["ingest", "billing", "entitlements"]),
        "the trace spans the three services"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_applied_in_one_batch_each_keep_their_own_trace() {
    const EVENTS: usize = 12;
    let stack = Stack::new().await;
    // Ingest first: the events wait on the queue, so billing meets a backlog and
    // applies it in batches (one worker: what arrives while it is busy is batched).
    let (_ingest, webhook_url) = stack.ingest().await;
    let mut events = Vec::new();
    for _ in 0..EVENTS {
        let stripe_customer = unique_customer();
        let (event_id, body) = subscription_created(&stripe_customer);
        stack.post(&webhook_url, &body).await;
        events.push((event_id, stripe_customer));
    }
    let _billing = stack.billing(&[("BILLING_WORKERS", "1".into())]).await;

    let mut versions = HashMap::new();
    for (event_id, stripe_customer) in &events {
        let ((_, status, tier), outbox) = stack.access_of(stripe_customer).await;
        assert_eq!((status.as_str(), tier.as_deref()), ("active", Some("pro")));
        assert!(!outbox.is_empty());
        versions.insert(
            event_id.clone(),
            outbox.iter().map(i64::to_string).collect::<HashSet<_>>(),
        );
    }
    let relays_expected: usize = versions.values().map(HashSet::len).sum();
    let spans = stack
        .collector
        .wait_for("the spans of every event", ARRIVAL, |spans| {
            let consumed = spans.iter().filter(|s| s.name == "billing_event").count();
            let relayed = spans.iter().filter(|s| s.name == "outbox_publish").count();
            let published = spans.iter().filter(|s| s.name == "amqp_publish").count();
            (consumed >= EVENTS && relayed >= relays_expected && published >= EVENTS)
                .then(|| spans.to_vec())
        })
        .await;

    let batches: Vec<&Recorded> = spans
        .iter()
        .filter(|s| {
            s.name == "billing_transaction" && s.attribute("size").is_some_and(|n| n != "1")
        })
        .collect();
    assert!(
        !batches.is_empty(),
        "billing applied the backlog in batches"
    );

    let mut traces = HashSet::new();
    for (event_id, _) in &events {
        let webhook = one(&spans, "ingest HTTP span", |s| {
            s.name == "webhook" && s.attribute("event_id") == Some(event_id.as_str())
        });
        let publish = one(&spans, "AMQP publish span", |s| {
            s.name == "amqp_publish"
                && s.attribute("messaging.message.id") == Some(event_id.as_str())
        });
        assert_span(webhook, "ingest", SpanKind::Server, None);
        assert_span(publish, "ingest", SpanKind::Producer, Some(webhook));
        // A batch that failed would add a second consume span; none may fail here.
        let consume = one(&spans, "billing consume span", |s| {
            s.name == "billing_event" && s.attribute("event_id") == Some(event_id.as_str())
        });
        assert_span(consume, "billing", SpanKind::Consumer, Some(publish));
        assert!(
            traces.insert(webhook.trace_id.clone()),
            "a trace per webhook"
        );

        // In a batch, the event's own span is the relay's parent, linked both ways
        // with the shared transaction; alone, its transaction span is.
        let batch = batches.iter().find(|b| {
            consume
                .links
                .contains(&(b.trace_id.clone(), b.span_id.clone()))
        });
        let writer = match batch {
            Some(batch) => {
                assert!(
                    batch
                        .links
                        .contains(&(consume.trace_id.clone(), consume.span_id.clone())),
                    "the batch links back to the event: {batch:#?}"
                );
                assert_ne!(
                    batch.trace_id, consume.trace_id,
                    "a batch is a trace of its own"
                );
                consume
            }
            None => {
                let transaction = one(&spans, "billing transaction span", |s| {
                    s.name == "billing_transaction" && s.parent_span_id == consume.span_id
                });
                assert_span(transaction, "billing", SpanKind::Internal, Some(consume));
                transaction
            }
        };
        for version in &versions[event_id] {
            let relay = one(&spans, "outbox publish span", |s| {
                s.name == "outbox_publish" && s.attribute("version") == Some(version.as_str())
            });
            assert_span(relay, "billing", SpanKind::Producer, Some(writer));
        }
    }
}
