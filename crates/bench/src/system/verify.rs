//! After the load: the final state against the harness's model (nothing lost,
//! nothing applied twice, every customer as the events imply, in PostgreSQL and in
//! entitlements' answers), and every Check answered during the run against the
//! features' policies.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::PgPool;
use tollgate_plans::{Plans, WhenUnavailable};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tonic::transport::Channel;

use super::events::Names;
use super::faults::{Fault, Window};
use super::load::{Answer, Clock, FEATURES};
use super::model::CustomerModel;
use crate::entitlements::authed;

/// Waits until billing has processed `events` events and relayed every change, or
/// `patience` has passed. Returns how long it took.
pub async fn drain(pool: &PgPool, events: usize, patience: Duration) -> Duration {
    let started = Instant::now();
    while started.elapsed() < patience {
        let counts: Result<(i64, i64), _> = sqlx::query_as(
            "SELECT (SELECT count(*) FROM stripe_events WHERE status = 'processed'),
                    (SELECT count(*) FROM entitlement_outbox WHERE published_at IS NULL)",
        )
        .fetch_one(pool)
        .await;
        if let Ok((processed, unpublished)) = counts
            && processed as usize >= events
            && unpublished == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

/// What the final state check found.
#[derive(Default)]
pub struct Verdict {
    /// Events accepted by ingest and absent from billing's ledger.
    pub lost: Vec<String>,
    /// Effects applied more than once (credits, top-up ledger rows).
    pub doubled: Vec<String>,
    /// Ledger rows of events never sent, not processed, or dead letters.
    pub ledger: Vec<String>,
    /// Customer, subscription or invoice state other than the model's.
    pub wrong: Vec<String>,
    /// Entitlements answers other than the model's.
    pub entitlements: Vec<String>,
    pub ledger_rows: usize,
    pub customers: usize,
    pub subscriptions: usize,
    pub invoices: usize,
    pub users_checked: usize,
}

impl Verdict {
    pub fn problems(&self) -> usize {
        self.lost.len()
            + self.doubled.len()
            + self.ledger.len()
            + self.wrong.len()
            + self.entitlements.len()
    }
}

type CustomerRow = (String, Option<String>, String, String, i64, i64);

pub async fn final_state(
    pool: &PgPool,
    names: &Names,
    plans: &'static Plans,
    models: &HashMap<u32, CustomerModel>,
    accepted: &HashSet<String>,
    entitlements: EntitlementsClient<Channel>,
) -> anyhow::Result<Verdict> {
    let mut verdict = Verdict::default();

    // The ledger: each accepted event once, processed; nothing else.
    let ledger: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM stripe_events")
        .fetch_all(pool)
        .await?;
    verdict.ledger_rows = ledger.len();
    let mut in_ledger = HashSet::with_capacity(ledger.len());
    for (id, status) in ledger {
        if !accepted.contains(&id) {
            verdict
                .ledger
                .push(format!("{id}: in the ledger, never sent"));
        } else if status != "processed" {
            verdict.ledger.push(format!("{id}: {status}"));
        }
        in_ledger.insert(id);
    }
    verdict.lost = accepted
        .iter()
        .filter(|id| !in_ledger.contains(*id))
        .cloned()
        .collect();
    verdict.lost.sort();
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(pool)
        .await?;
    if dead > 0 {
        verdict.ledger.push(format!("{dead} dead letters"));
    }

    // Customers: link, access, credits.
    let rows: Vec<CustomerRow> = sqlx::query_as(
        "SELECT c.stripe_customer_id, c.user_id, c.access_status, COALESCE(c.tier, $1),
                COALESCE(b.balance, 0),
                (SELECT count(*) FROM credit_ledger l WHERE l.customer_id = c.id AND l.reason = 'topup')
           FROM customers c LEFT JOIN credit_balances b ON b.customer_id = c.id",
    )
    .bind(plans.default_tier())
    .fetch_all(pool)
    .await?;
    verdict.customers = rows.len();
    let mut stored_customers = HashSet::new();
    for (stripe_id, user, status, tier, balance, topups) in rows {
        let Some((c, model)) = names
            .customer_index(&stripe_id)
            .and_then(|c| Some((c, models.get(&c)?)))
        else {
            verdict
                .wrong
                .push(format!("{stripe_id}: a customer no event created"));
            continue;
        };
        stored_customers.insert(c);
        let want_user = model.linked.then(|| names.user(c));
        if user != want_user {
            verdict.wrong.push(format!(
                "{stripe_id}: user {user:?}, expected {want_user:?}"
            ));
        }
        let (want_status, want_tier) = model.access(plans);
        if (status.as_str(), tier.as_str()) != (want_status, want_tier) {
            verdict.wrong.push(format!(
                "{stripe_id}: access {status}/{tier}, expected {want_status}/{want_tier}"
            ));
        }
        if topups as usize > model.topups() || balance > model.credits() {
            verdict.doubled.push(format!(
                "{stripe_id}: {topups} top-ups for {balance} credits, expected {} for {}",
                model.topups(),
                model.credits()
            ));
        } else if topups as usize != model.topups() || balance != model.credits() {
            verdict.wrong.push(format!(
                "{stripe_id}: {topups} top-ups for {balance} credits, expected {} for {}",
                model.topups(),
                model.credits()
            ));
        }
    }
    for (c, model) in models {
        if model.exists && !stored_customers.contains(c) {
            verdict
                .wrong
                .push(format!("{}: no customer row", names.customer(*c)));
        }
    }

    // Subscriptions and invoices, object by object.
    let mut want_subscriptions = BTreeMap::new();
    let mut want_invoices = BTreeMap::new();
    for (c, model) in models {
        for (sub, state) in model.subscriptions(plans) {
            want_subscriptions.insert(names.subscription(*c, sub), state);
        }
        for (invoice, paid) in model.invoices() {
            want_invoices.insert(
                names.invoice(*c, invoice),
                if paid { "paid" } else { "open" },
            );
        }
    }
    let subscriptions: Vec<(String, String, String)> =
        sqlx::query_as("SELECT stripe_subscription_id, status, tier FROM subscriptions")
            .fetch_all(pool)
            .await?;
    verdict.subscriptions = subscriptions.len();
    for (id, status, tier) in subscriptions {
        match want_subscriptions.remove(&id) {
            Some(want) if want == (status.as_str(), tier.as_str()) => {}
            want => verdict
                .wrong
                .push(format!("{id}: {status}/{tier}, expected {want:?}")),
        }
    }
    verdict.wrong.extend(
        want_subscriptions
            .keys()
            .map(|id| format!("{id}: subscription missing")),
    );
    let invoices: Vec<(String, String)> =
        sqlx::query_as("SELECT stripe_invoice_id, status FROM invoices")
            .fetch_all(pool)
            .await?;
    verdict.invoices = invoices.len();
    for (id, status) in invoices {
        match want_invoices.remove(&id) {
            Some(want) if want == status => {}
            want => verdict
                .wrong
                .push(format!("{id}: {status}, expected {want:?}")),
        }
    }
    verdict.wrong.extend(
        want_invoices
            .keys()
            .map(|id| format!("{id}: invoice missing")),
    );

    // Entitlements: every user's answer, at least as fresh as the last change.
    let version: i64 = sqlx::query_scalar("SELECT COALESCE(max(id), 0) FROM entitlement_outbox")
        .fetch_one(pool)
        .await?;
    let linked: Vec<(u32, &CustomerModel)> = models
        .iter()
        .filter(|(_, m)| m.linked)
        .map(|(c, m)| (*c, m))
        .collect();
    verdict.users_checked = linked.len();
    let mismatches: Vec<Option<String>> = futures_util::stream::iter(linked)
        .map(|(c, model)| {
            let mut client = entitlements.clone();
            let subject = names.user(c);
            async move {
                let (want_status, want_tier) = model.access(plans);
                let mut last = String::new();
                // A few tries: `at_least_version` waits a bounded time.
                for _ in 0..5 {
                    match client
                        .get_entitlements(authed(pb::GetEntitlementsRequest {
                            subject: subject.clone(),
                            at_least_version: version,
                        }))
                        .await
                    {
                        Ok(r) => {
                            let r = r.into_inner();
                            if r.known
                                && !r.degraded
                                && r.status == want_status
                                && r.tier == want_tier
                                && r.credit_balance == model.credits()
                            {
                                return None;
                            }
                            last = format!(
                                "known {} degraded {} {}/{} credits {}",
                                r.known, r.degraded, r.status, r.tier, r.credit_balance
                            );
                        }
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(format!(
                    "{subject}: entitlements answers {last}, expected {want_status}/{want_tier} credits {}",
                    model.credits()
                ))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    verdict.entitlements = mismatches.into_iter().flatten().collect();
    Ok(verdict)
}

/// One entitlement change as committed: its version, tier and times on the harness clock.
struct Change {
    version: i64,
    tier: String,
    created_us: i64,
    published_us: Option<i64>,
}

/// (version, Stripe customer, tier, created and published in Unix microseconds).
type OutboxRow = (i64, String, Option<String>, i64, Option<i64>);

/// What the policy check found.
#[derive(Default)]
pub struct Policy {
    pub violations: Vec<String>,
    /// Degraded answers, per feature.
    pub degraded: BTreeMap<&'static str, u64>,
    /// Answers to the quota'd feature checked while Redis was away.
    pub redis_checked: u64,
    /// Allowed answers checked against the committed changes.
    pub allowed_checked: u64,
}

/// Every answer against policy:
/// - a degraded answer allows exactly when the feature fails open;
/// - an allowed answer is backed by a committed state that grants the feature, no
///   older than the answer's own version and than every change published more than
///   `stale_bound` before the check was asked (entitlements may not serve a state
///   older than that while calling itself fresh);
/// - while Redis is away, a feature with a quota answers allowed and degraded.
pub async fn policy(
    pool: &PgPool,
    names: &Names,
    plans: &'static Plans,
    clock: &Clock,
    answers: &[Answer],
    windows: &[Window],
    stale_bound: Duration,
) -> anyhow::Result<Policy> {
    let mut result = Policy::default();
    let rows: Vec<OutboxRow> = sqlx::query_as(
        "SELECT id, payload->>'stripe_customer_id', payload->>'tier',
                (extract(epoch FROM created_at) * 1000000)::bigint,
                (extract(epoch FROM published_at) * 1000000)::bigint
           FROM entitlement_outbox ORDER BY id",
    )
    .fetch_all(pool)
    .await?;
    let mut changes: HashMap<u32, Vec<Change>> = HashMap::new();
    for (version, customer, tier, created, published) in rows {
        if let Some(c) = names.customer_index(&customer) {
            changes.entry(c).or_default().push(Change {
                version,
                tier: tier.unwrap_or_else(|| plans.default_tier().to_string()),
                created_us: clock.since_start(created),
                published_us: published.map(|p| clock.since_start(p)),
            });
        }
    }
    let bound = stale_bound.as_micros() as i64;
    // Redis counts as away from its cut until it is back, less a second for the
    // service's connection to notice.
    let redis_away: Vec<(u64, u64)> = windows
        .iter()
        .filter(|w| w.fault == Fault::Redis)
        .map(|w| (w.down_us + 1_000_000, w.up_us))
        .collect();
    for answer in answers {
        let feature = FEATURES[answer.feature as usize];
        let open = plans
            .feature(feature)
            .is_some_and(|f| f.when_unavailable == WhenUnavailable::Open);
        if answer.degraded {
            *result.degraded.entry(feature).or_default() += 1;
            if answer.allowed != open {
                result.violations.push(format!(
                    "{} {feature} at {:.3} s: degraded and allowed={} (the feature fails {})",
                    names.user(answer.customer),
                    answer.start_us as f64 / 1e6,
                    answer.allowed,
                    if open { "open" } else { "closed" }
                ));
            }
        } else if answer.allowed {
            result.allowed_checked += 1;
            let history = changes.get(&answer.customer).map_or(&[][..], Vec::as_slice);
            let start = answer.start_us as i64;
            let floor = history
                .iter()
                .rposition(|c| {
                    c.version <= answer.version || c.published_us.is_some_and(|p| p < start - bound)
                })
                .unwrap_or(0);
            let ceiling = history
                .iter()
                .rposition(|c| c.created_us <= answer.end_us as i64);
            let backed = ceiling.is_some_and(|ceiling| {
                history
                    .get(floor..=ceiling)
                    .unwrap_or(&[])
                    .iter()
                    .any(|c| plans.tier_has_feature(&c.tier, feature))
            });
            if !backed {
                let tiers: Vec<String> = history
                    .iter()
                    .map(|c| {
                        format!(
                            "v{} {} created {:.3} s published {}",
                            c.version,
                            c.tier,
                            c.created_us as f64 / 1e6,
                            c.published_us
                                .map_or("never".into(), |p| format!("{:.3} s", p as f64 / 1e6))
                        )
                    })
                    .collect();
                result.violations.push(format!(
                    "{} {feature} allowed at {:.3}-{:.3} s (version {}) without a committed state granting it \
                     within {} ms: changes {}",
                    names.user(answer.customer),
                    answer.start_us as f64 / 1e6,
                    answer.end_us as f64 / 1e6,
                    answer.version,
                    stale_bound.as_millis(),
                    tiers.join("; ")
                ));
            }
        }
        let in_redis_outage = redis_away
            .iter()
            .any(|(from, to)| answer.start_us >= *from && answer.end_us <= *to);
        if in_redis_outage && answer.has_quota && !answer.unknown_subject {
            result.redis_checked += 1;
            if !(answer.degraded && answer.allowed) {
                result.violations.push(format!(
                    "{} {feature} at {:.3} s while Redis was away: allowed={} degraded={} (expected allowed and degraded)",
                    names.user(answer.customer),
                    answer.start_us as f64 / 1e6,
                    answer.allowed,
                    answer.degraded
                ));
            }
        }
    }
    Ok(result)
}
