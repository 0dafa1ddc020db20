//! The load: webhook senders that behave like Stripe (signed POSTs, retried until
//! accepted, some delivered late and some twice), a paced Check load, and a Watch
//! stream that times each expected change from its webhook's POST to entitlements.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tollgate_plans::Plans;
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::signed_headers;
use tonic::transport::Channel;

use super::events::{Names, Templates};
use super::model::{CustomerModel, Effect, Rng, Script};
use crate::entitlements::{WEBHOOK_SECRET, authed};

/// The harness's time base: microseconds since the run started.
pub struct Clock {
    origin: Instant,
    origin_unix_us: i64,
}

impl Clock {
    pub fn new() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970");
        Self {
            origin: Instant::now(),
            origin_unix_us: unix.as_micros() as i64,
        }
    }

    pub fn us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }

    /// A wall-clock time (PostgreSQL's, same machine) on this time base.
    pub fn since_start(&self, unix_us: i64) -> i64 {
        unix_us - self.origin_unix_us
    }
}

/// Features the checks ask about, in turn: fail-closed and fail-open ones, one with a
/// quota in Redis.
pub const FEATURES: [&str; 4] = ["scripts.download", "docs.read", "api.calls", "api.priority"];

/// What a webhook should make entitlements announce for its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Access(&'static str, &'static str),
    Credits,
}

struct Expectation {
    expect: Expect,
    sent_us: u64,
}

/// One webhook-to-entitlements time.
#[derive(Debug, Clone, Copy)]
pub struct Fresh {
    pub sent_us: u64,
    pub latency_us: u64,
}

/// What the tasks share.
pub struct Shared {
    pub clock: Clock,
    pub names: Names,
    pub stop_sending: AtomicBool,
    pub stop_checking: AtomicBool,
    expectations: Mutex<HashMap<u32, VecDeque<Expectation>>>,
    fresh: Mutex<Vec<Fresh>>,
    /// Expected changes overtaken by a later one of the same customer before they
    /// were seen (billing applied that customer's events in another order).
    pub superseded: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub watched: AtomicU64,
    /// Posts in flight and accepted, for the harness's progress lines.
    pub accepted: AtomicU64,
}

impl Shared {
    pub fn new(names: Names) -> Self {
        Self {
            clock: Clock::new(),
            names,
            stop_sending: AtomicBool::new(false),
            stop_checking: AtomicBool::new(false),
            expectations: Mutex::new(HashMap::new()),
            fresh: Mutex::new(Vec::new()),
            superseded: AtomicU64::new(0),
            watch_restarts: AtomicU64::new(0),
            watched: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
        }
    }

    fn expect(&self, customer: u32, expect: Expect, sent_us: u64) {
        self.expectations
            .lock()
            .expect("not poisoned")
            .entry(customer)
            .or_default()
            .push_back(Expectation { expect, sent_us });
    }

    fn observe(&self, change: &pb::EntitlementChange) {
        let Some(customer) = self.names.customer_index(&change.stripe_customer_id) else {
            return;
        };
        let now = self.clock.us();
        let tier = if change.tier.is_empty() {
            "free"
        } else {
            change.tier.as_str()
        };
        let seen = |e: &Expect| match e {
            Expect::Access(status, t) => {
                change.change == "access" && change.status == *status && tier == *t
            }
            Expect::Credits => change.change == "credits",
        };
        let mut expectations = self.expectations.lock().expect("not poisoned");
        let Some(queue) = expectations.get_mut(&customer) else {
            return;
        };
        let Some(found) = queue.iter().position(|e| seen(&e.expect)) else {
            return;
        };
        let expectation = queue.remove(found).expect("found");
        // Older expectations of the same kind were passed over: never seen as such.
        let kind = std::mem::discriminant(&expectation.expect);
        let before = queue.len();
        let mut index = 0;
        queue.retain(|e| {
            let keep = index >= found || std::mem::discriminant(&e.expect) != kind;
            index += 1;
            keep
        });
        self.superseded
            .fetch_add((before - queue.len()) as u64, Ordering::Relaxed);
        self.fresh.lock().expect("not poisoned").push(Fresh {
            sent_us: expectation.sent_us,
            latency_us: now.saturating_sub(expectation.sent_us),
        });
    }

    pub fn fresh(&self) -> Vec<Fresh> {
        self.fresh.lock().expect("not poisoned").clone()
    }

    /// Expected changes never seen on Watch: how many, and a few of them.
    pub fn unobserved(&self) -> (usize, Vec<(u32, String)>) {
        let expectations = self.expectations.lock().expect("not poisoned");
        let mut examples = Vec::new();
        let mut count = 0;
        for (customer, queue) in expectations.iter() {
            for e in queue {
                count += 1;
                if examples.len() < 5 {
                    examples.push((
                        *customer,
                        format!(
                            "{} {:?} expected after {:.3} s",
                            self.names.customer(*customer),
                            e.expect,
                            e.sent_us as f64 / 1e6
                        ),
                    ));
                }
            }
        }
        (count, examples)
    }
}

/// How the webhooks are sent.
#[derive(Clone)]
pub struct SendPlan {
    pub url: String,
    /// Events per second, all senders together.
    pub rate: f64,
    pub senders: usize,
    pub customers: u32,
    /// Share of events delivered late (after later events of their customer).
    pub late: f64,
    /// Share of events delivered a second time.
    pub duplicate: f64,
    pub seed: u64,
    /// `created` of every customer's first event (days before now).
    pub epoch: i64,
}

/// What one sender did.
#[derive(Default)]
pub struct Sent {
    /// The model of each customer this sender owns, from the events it delivered.
    pub models: Vec<(u32, CustomerModel)>,
    /// Ids of the distinct events delivered (answered 2xx).
    pub accepted: Vec<String>,
    pub posts: u64,
    pub retries: u64,
    pub duplicates: u64,
    pub late: u64,
    /// Events never accepted before the harness gave up on them.
    pub undelivered: Vec<String>,
    /// Per event type: events sent (first deliveries).
    pub by_type: HashMap<&'static str, u64>,
}

struct Outgoing {
    due: Instant,
    customer: u32,
    id: String,
    body: Vec<u8>,
    /// None for a duplicate delivery.
    effect: Option<Effect>,
}

/// Picks the customer of the next event: 70 % of events go to the first fifth of
/// the customers (the busy ones), the rest to anyone.
fn pick(rng: &mut Rng, owned: &[u32]) -> u32 {
    let hot = owned.len().div_ceil(5);
    if rng.unit() < 0.7 {
        owned[rng.below(hot)]
    } else {
        owned[rng.below(owned.len())]
    }
}

/// One sender: owns the customers `c % senders == worker`, so a customer's events
/// are posted one at a time, in the order this sender decides (late ones included).
pub async fn send(
    worker: usize,
    plan: SendPlan,
    shared: Arc<Shared>,
    plans: &'static Plans,
    templates: Arc<Templates>,
) -> Sent {
    let owned: Vec<u32> = (0..plan.customers)
        .filter(|c| *c as usize % plan.senders == worker)
        .collect();
    let mut sent = Sent::default();
    if owned.is_empty() {
        return sent;
    }
    let mut rng = Rng::new(plan.seed ^ (worker as u64 + 1).wrapping_mul(0x1000_0000_01b3));
    let mut scripts: HashMap<u32, (Script, u32)> = HashMap::new();
    let mut models: HashMap<u32, CustomerModel> = HashMap::new();
    let mut delayed: Vec<Outgoing> = Vec::new();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client");
    let interval = Duration::from_secs_f64(plan.senders as f64 / plan.rate);
    let mut next = Instant::now() + interval.mul_f64(worker as f64 / plan.senders as f64);
    while !shared.stop_sending.load(Ordering::Relaxed) {
        next += interval;
        let now = Instant::now();
        // Behind by more than a second (an outage): no burst to catch up.
        if next + Duration::from_secs(1) < now {
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
        let due = delayed
            .iter()
            .enumerate()
            .filter(|(_, o)| o.due <= Instant::now())
            .min_by_key(|(_, o)| o.due)
            .map(|(i, _)| i);
        let outgoing = match due {
            Some(i) => delayed.swap_remove(i),
            None => loop {
                let customer = pick(&mut rng, &owned);
                let (script, n) = scripts
                    .entry(customer)
                    .or_insert_with(|| (Script::new(plan.epoch), 0));
                let planned = script.next(&mut rng, plans);
                *n += 1;
                let id = shared.names.event(customer, *n);
                *sent.by_type.entry(planned.event_type).or_default() += 1;
                let outgoing = Outgoing {
                    due: Instant::now(),
                    customer,
                    body: templates.body(&shared.names, customer, &id, &planned),
                    id,
                    effect: Some(planned.effect),
                };
                if rng.unit() < plan.late {
                    sent.late += 1;
                    delayed.push(Outgoing {
                        due: Instant::now() + Duration::from_secs_f64(0.3 + 2.7 * rng.unit()),
                        ..outgoing
                    });
                    continue;
                }
                break outgoing;
            },
        };
        deliver(
            outgoing,
            &plan,
            &shared,
            &http,
            &mut rng,
            &mut models,
            &mut delayed,
            &mut sent,
            plans,
        )
        .await;
    }
    // Whatever is still held back goes now: every event generated is delivered.
    delayed.sort_by_key(|o| o.due);
    let mut rest: Vec<Outgoing> = std::mem::take(&mut delayed);
    let mut dropped_duplicates = Vec::new();
    for outgoing in rest.drain(..) {
        deliver(
            outgoing,
            &plan,
            &shared,
            &http,
            &mut rng,
            &mut models,
            &mut dropped_duplicates,
            &mut sent,
            plans,
        )
        .await;
    }
    sent.models = models.into_iter().collect();
    sent
}

#[allow(clippy::too_many_arguments)]
async fn deliver(
    outgoing: Outgoing,
    plan: &SendPlan,
    shared: &Shared,
    http: &reqwest::Client,
    rng: &mut Rng,
    models: &mut HashMap<u32, CustomerModel>,
    delayed: &mut Vec<Outgoing>,
    sent: &mut Sent,
    plans: &'static Plans,
) {
    let sent_us = shared.clock.us();
    if let Some(effect) = &outgoing.effect {
        // The model moves when the event is sent: entitlements may announce the
        // change before the POST's answer is back.
        let model = models.entry(outgoing.customer).or_default();
        let (access, credits) = (model.access(plans), model.credits());
        model.apply(effect);
        let after = model.access(plans);
        if after != access {
            shared.expect(outgoing.customer, Expect::Access(after.0, after.1), sent_us);
        }
        if model.credits() != credits {
            shared.expect(outgoing.customer, Expect::Credits, sent_us);
        }
    } else {
        sent.duplicates += 1;
    }
    let give_up = Instant::now() + Duration::from_secs(180);
    let mut backoff = Duration::from_millis(100);
    loop {
        sent.posts += 1;
        let accepted = http
            .post(&plan.url)
            .header(
                "Stripe-Signature",
                signed_headers(WEBHOOK_SECRET, &outgoing.body),
            )
            .header("Content-Type", "application/json")
            .body(outgoing.body.clone())
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if accepted {
            break;
        }
        if Instant::now() > give_up {
            if outgoing.effect.is_some() {
                sent.undelivered.push(outgoing.id);
            }
            return;
        }
        sent.retries += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    if outgoing.effect.is_some() {
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if rng.unit() < plan.duplicate {
            delayed.push(Outgoing {
                due: Instant::now() + Duration::from_secs_f64(0.1 + 2.9 * rng.unit()),
                customer: outgoing.customer,
                id: outgoing.id.clone(),
                body: outgoing.body.clone(),
                effect: None,
            });
        }
        sent.accepted.push(outgoing.id);
    }
}

/// One answered Check.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub start_us: u64,
    pub end_us: u64,
    pub customer: u32,
    pub feature: u8,
    pub allowed: bool,
    pub degraded: bool,
    pub unknown_subject: bool,
    pub has_quota: bool,
    pub version: i64,
}

#[derive(Default)]
pub struct Checked {
    pub answers: Vec<Answer>,
    /// Checks that got an error instead of an answer: (start, gRPC code).
    pub errors: Vec<(u64, tonic::Code)>,
}

/// One of `concurrency` checkers, together paced at `rate` Checks per second, each
/// over its channel.
pub async fn check(
    task: usize,
    concurrency: usize,
    rate: f64,
    customers: u32,
    client: EntitlementsClient<Channel>,
    shared: Arc<Shared>,
) -> Checked {
    let mut checked = Checked::default();
    let mut rng = Rng::new(0xC0FFEE + task as u64);
    let everyone: Vec<u32> = (0..customers).collect();
    let interval = Duration::from_secs_f64(concurrency as f64 / rate);
    let mut next = Instant::now() + interval.mul_f64(task as f64 / concurrency as f64);
    let mut n = task;
    while !shared.stop_checking.load(Ordering::Relaxed) {
        next += interval;
        let now = Instant::now();
        if next + Duration::from_secs(1) < now {
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
        let customer = pick(&mut rng, &everyone);
        let feature = (n % FEATURES.len()) as u8;
        n += 1;
        let mut request = authed(pb::CheckRequest {
            subject: shared.names.user(customer),
            feature: FEATURES[feature as usize].into(),
            at_least_version: 0,
        });
        request.set_timeout(Duration::from_secs(2));
        let start_us = shared.clock.us();
        let answer =
            tokio::time::timeout(Duration::from_secs(3), client.clone().check(request)).await;
        let end_us = shared.clock.us();
        match answer {
            Ok(Ok(response)) => {
                let r = response.into_inner();
                checked.answers.push(Answer {
                    start_us,
                    end_us,
                    customer,
                    feature,
                    allowed: r.allowed,
                    degraded: r.degraded,
                    unknown_subject: r.reason == pb::Reason::UnknownSubject as i32,
                    has_quota: r.quota.is_some(),
                    version: r.version,
                });
            }
            Ok(Err(status)) => checked.errors.push((start_us, status.code())),
            Err(_) => checked
                .errors
                .push((start_us, tonic::Code::DeadlineExceeded)),
        }
    }
    checked
}

/// Follows every change entitlements announces until aborted, resuming after the
/// last version seen whenever the stream ends.
pub async fn watch(client: EntitlementsClient<Channel>, shared: Arc<Shared>) {
    let mut last = 0;
    loop {
        let stream = client
            .clone()
            .watch(authed(pb::WatchRequest {
                subject: String::new(),
                from_version: last,
            }))
            .await;
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            while let Ok(Some(change)) = stream.message().await {
                last = last.max(change.version);
                shared.watched.fetch_add(1, Ordering::Relaxed);
                shared.observe(&change);
            }
        }
        shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
