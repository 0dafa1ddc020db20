//! `tollgate-bench system`: the whole system under a sustained, realistic webhook
//! load. Signed Stripe events for 10,000 customers (sign-ups, checkouts, subscription
//! changes and cancellations, renewals, failed payments and their recoveries, payment
//! methods, credit top-ups; some delivered late, some twice, as Stripe does) are POSTed
//! to the release `ingest`, flow through RabbitMQ to two `billing` replicas and on to
//! `entitlements`, while a paced Check load runs against entitlements.
//!
//! Measured: the webhook rate achieved, webhook-to-entitlements freshness (from the
//! POST to the change arriving on a Watch stream of entitlements) and Check latency.
//! Checked afterwards: the final state equals the state the harness computes from the
//! events it sent, alone (every event in billing's ledger exactly once; each
//! customer's access, tier, credits, subscriptions and invoices; entitlements'
//! answers), and every Check answer followed its feature's policy.
//!
//! With `--faults proxy|real` (`make chaos`), faults are injected during the load,
//! one at a time (see `faults`); the run fails on any lost or doubled effect or policy
//! violation.

mod events;
mod faults;
mod load;
mod model;
mod stack;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::task::JoinSet;
use tollgate_plans::Plans;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::workspace_root;

use crate::report::{self, Figure, per_second};

use events::{Names, Templates};
use faults::{Fault, Mode, Window};
use load::{Answer, Checked, SendPlan, Sent, Shared};
use model::CustomerModel;

pub struct Options {
    customers: u32,
    rate: f64,
    seconds: u64,
    check_rate: f64,
    checkers: usize,
    senders: usize,
    late: f64,
    duplicates: f64,
    seed: u64,
    mode: Mode,
    faults: Vec<Fault>,
    outage: Duration,
    settle: Duration,
    stale_bound: Duration,
}

impl Options {
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            customers: 10_000,
            rate: 300.0,
            seconds: 60,
            check_rate: 500.0,
            checkers: 16,
            senders: 32,
            late: 0.10,
            duplicates: 0.05,
            seed: 1,
            mode: Mode::None,
            faults: Fault::ALL.to_vec(),
            outage: Duration::from_secs(8),
            settle: Duration::from_secs(15),
            stale_bound: Duration::from_secs(2),
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--customers" => options.customers = value.parse()?,
                "--rate" => options.rate = value.parse()?,
                "--seconds" => options.seconds = value.parse()?,
                "--check-rate" => options.check_rate = value.parse()?,
                "--checkers" => options.checkers = value.parse()?,
                "--senders" => options.senders = value.parse()?,
                "--late" => options.late = value.parse::<f64>()? / 100.0,
                "--duplicates" => options.duplicates = value.parse::<f64>()? / 100.0,
                "--seed" => options.seed = value.parse()?,
                "--faults" => options.mode = Mode::parse(&value)?,
                "--fault-list" => {
                    options.faults = value
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(Fault::parse)
                        .collect::<anyhow::Result<_>>()?
                }
                "--outage" => options.outage = Duration::from_secs_f64(value.parse()?),
                "--settle" => options.settle = Duration::from_secs_f64(value.parse()?),
                "--stale-bound-ms" => options.stale_bound = Duration::from_millis(value.parse()?),
                other => bail!("unknown flag {other}"),
            }
        }
        if options.customers == 0
            || options.rate <= 0.0
            || options.check_rate <= 0.0
            || options.checkers == 0
            || options.senders == 0
        {
            bail!("--customers, --rate, --check-rate, --checkers and --senders must be positive");
        }
        Ok(options)
    }
}

/// The plans file the services read, for prices → tiers and features' policies.
fn plans() -> anyhow::Result<&'static Plans> {
    static PLANS: OnceLock<Plans> = OnceLock::new();
    if let Some(plans) = PLANS.get() {
        return Ok(plans);
    }
    let loaded = Plans::load(Some(&workspace_root().join("config/plans.toml")))?;
    Ok(PLANS.get_or_init(|| loaded))
}

fn percentile_ms(values: &mut [u64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_unstable();
    values[((values.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let plans = plans()?;
    let stores = stack::Stores::create(options.mode == Mode::Proxy).await?;
    let mut billing = [stores.billing(0)?, stores.billing(1)?];
    let mut ingest = stores.ingest()?;
    let mut entitlements = stores.entitlements()?;
    for service in billing.iter_mut() {
        service.start().await?;
    }
    ingest.start().await?;
    entitlements.start().await?;
    let client = EntitlementsClient::new(stack::channel(entitlements.port));

    let names = Names {
        run: uuid::Uuid::new_v4().simple().to_string()[..8].to_string(),
    };
    let shared = Arc::new(Shared::new(names.clone()));
    let templates = Arc::new(Templates::load());
    let watcher = tokio::spawn(load::watch(client.clone(), shared.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "system benchmark: {} customers, {:.0} events/s target ({:.0} % late, {:.0} % twice), {:.0} checks/s, \
         1 ingest, 2 billing, 1 entitlements; faults: {:?}; {} CPU core(s)",
        options.customers,
        options.rate,
        options.late * 100.0,
        options.duplicates * 100.0,
        options.check_rate,
        options.mode,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let plan = SendPlan {
        url: format!("http://127.0.0.1:{}/webhook", ingest.port),
        rate: options.rate,
        senders: options.senders,
        customers: options.customers,
        late: options.late,
        duplicate: options.duplicates,
        seed: options.seed,
        epoch: tollgate_test_support::unix_now() - 30 * 86_400,
    };
    let load_started = shared.clock.us();
    let mut senders = JoinSet::new();
    for worker in 0..options.senders {
        senders.spawn(load::send(
            worker,
            plan.clone(),
            shared.clone(),
            plans,
            templates.clone(),
        ));
    }
    let channels: Vec<_> = (0..2).map(|_| stack::channel(entitlements.port)).collect();
    let mut checkers = JoinSet::new();
    for task in 0..options.checkers {
        checkers.spawn(load::check(
            task,
            options.checkers,
            options.check_rate,
            options.customers,
            EntitlementsClient::new(channels[task % channels.len()].clone()),
            shared.clone(),
        ));
    }
    let progress = tokio::spawn({
        let shared = shared.clone();
        async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let accepted = shared.accepted.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.0} s: {accepted} events accepted ({:.0}/s over the last 10 s), {} changes watched",
                    shared.clock.us() as f64 / 1e6,
                    (accepted - last) as f64 / 10.0,
                    shared.watched.load(Ordering::Relaxed)
                );
                last = accepted;
            }
        }
    });

    // The load, with faults one after another, or for --seconds without.
    let mut windows: Vec<Window> = Vec::new();
    let faulty = options.mode != Mode::None && !options.faults.is_empty();
    if faulty {
        tokio::time::sleep(options.settle).await;
        for fault in &options.faults {
            eprintln!("  fault: {}", fault.describe(options.mode));
            let clock = &shared.clock;
            let window = faults::inject(
                *fault,
                options.mode,
                options.outage,
                &stores,
                &mut billing[0],
                || clock.us(),
            )
            .await?;
            eprintln!(
                "  fault over after {:.1} s",
                (window.up_us - window.down_us) as f64 / 1e6
            );
            windows.push(window);
            tokio::time::sleep(options.settle).await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(options.seconds)).await;
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    let load_stopped = shared.clock.us();
    let mut sent: Vec<Sent> = Vec::new();
    while let Some(s) = senders.join_next().await {
        sent.push(s?);
    }
    shared.stop_checking.store(true, Ordering::Relaxed);
    let mut checked: Vec<Checked> = Vec::new();
    while let Some(c) = checkers.join_next().await {
        checked.push(c?);
    }
    progress.abort();

    // Gather the model and what was delivered.
    let mut models: HashMap<u32, CustomerModel> = HashMap::new();
    let mut accepted: HashSet<String> = HashSet::new();
    let (mut posts, mut retries, mut duplicates, mut late) = (0, 0, 0, 0);
    let mut undelivered = Vec::new();
    let mut by_type: HashMap<&'static str, u64> = HashMap::new();
    for s in sent {
        models.extend(s.models);
        accepted.extend(s.accepted);
        posts += s.posts;
        retries += s.retries;
        duplicates += s.duplicates;
        late += s.late;
        undelivered.extend(s.undelivered);
        for (t, n) in s.by_type {
            *by_type.entry(t).or_default() += n;
        }
    }

    let pool = stores.db.pool().await;
    let drained = verify::drain(&pool, accepted.len(), Duration::from_secs(240)).await;
    // Changes still on their way to the watcher.
    tokio::time::sleep(Duration::from_secs(2)).await;
    watcher.abort();
    let mut crashed = Vec::new();
    for service in billing.iter_mut().chain([&mut ingest, &mut entitlements]) {
        if !service.running() {
            crashed.push(format!("{} exited:\n{}", service.name, service.log_tail()));
        }
    }

    let verdict =
        verify::final_state(&pool, &names, plans, &models, &accepted, client.clone()).await?;
    let answers: Vec<Answer> = checked
        .iter()
        .flat_map(|c| c.answers.iter().copied())
        .collect();
    let errors: Vec<(u64, tonic::Code)> = checked
        .iter()
        .flat_map(|c| c.errors.iter().copied())
        .collect();
    let policy = verify::policy(
        &pool,
        &names,
        plans,
        &shared.clock,
        &answers,
        &windows,
        options.stale_bound,
    )
    .await?;

    // Report.
    let settle_us = options.settle.as_micros() as u64;
    let steady = |t: u64| !windows.iter().any(|w| w.covers(t, settle_us));
    let fresh = shared.fresh();
    let (unobserved, unobserved_examples) = shared.unobserved();
    let mut fresh_all: Vec<u64> = fresh.iter().map(|f| f.latency_us).collect();
    let mut fresh_steady: Vec<u64> = fresh
        .iter()
        .filter(|f| steady(f.sent_us))
        .map(|f| f.latency_us)
        .collect();
    let mut check_all: Vec<u64> = answers.iter().map(|a| a.end_us - a.start_us).collect();
    let mut check_steady: Vec<u64> = answers
        .iter()
        .filter(|a| steady(a.start_us))
        .map(|a| a.end_us - a.start_us)
        .collect();
    let load_seconds = (load_stopped - load_started) as f64 / 1e6;
    let mut types: Vec<_> = by_type.into_iter().collect();
    types.sort_by_key(|(_, n)| std::cmp::Reverse(*n));

    println!();
    if faulty {
        println!("faults injected: {}", windows.len());
        for w in &windows {
            println!(
                "  {:>6.1} s  {} ({:.1} s)",
                w.down_us as f64 / 1e6,
                w.fault.describe(options.mode),
                (w.up_us - w.down_us) as f64 / 1e6
            );
        }
    }
    println!(
        "events sent: {} distinct ({} delivered late, {} delivered twice), {} POSTs ({} retried), {:.1} s of load",
        accepted.len() + undelivered.len(),
        late,
        duplicates,
        posts,
        retries,
        load_seconds
    );
    println!(
        "  mix: {}",
        types
            .iter()
            .map(|(t, n)| format!("{t} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "webhook rate achieved: {:.0}/s distinct events ({:.0}/s POSTs incl. duplicates and retries; target {:.0}/s)",
        accepted.len() as f64 / load_seconds,
        posts as f64 / load_seconds,
        options.rate
    );
    println!(
        "freshness, POST to the change on entitlements' Watch: p50 {:.1} ms, p99 {:.1} ms ({} changes{}); \
         all: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({}); {} overtaken by a later change, {} never seen",
        percentile_ms(&mut fresh_steady, 0.5),
        percentile_ms(&mut fresh_steady, 0.99),
        fresh_steady.len(),
        if faulty { ", outside faults" } else { "" },
        percentile_ms(&mut fresh_all, 0.5),
        percentile_ms(&mut fresh_all, 0.99),
        percentile_ms(&mut fresh_all, 1.0),
        fresh_all.len(),
        shared.superseded.load(Ordering::Relaxed),
        unobserved
    );
    for (customer, example) in &unobserved_examples {
        // What was committed for that customer, to tell a lost change from a reordered one.
        let history: Vec<(i64, String, String, String)> = sqlx::query_as(
            "SELECT id, reason, payload->>'access_status', COALESCE(payload->>'tier', '-')
               FROM entitlement_outbox WHERE payload->>'stripe_customer_id' = $1 ORDER BY id",
        )
        .bind(names.customer(*customer))
        .fetch_all(&pool)
        .await?;
        let history: Vec<String> = history
            .iter()
            .map(|(v, reason, status, tier)| format!("v{v} {reason} {status}/{tier}"))
            .collect();
        println!("  never seen: {example}; committed: {}", history.join(", "));
    }
    let mut error_codes: BTreeMap<String, usize> = BTreeMap::new();
    for (_, code) in &errors {
        *error_codes.entry(format!("{code:?}")).or_default() += 1;
    }
    let errors_outside = errors.iter().filter(|(t, _)| steady(*t)).count();
    println!(
        "check: {} answered ({:.0}/s), p50 {:.2} ms, p99 {:.2} ms{}; all: p99 {:.2} ms, max {:.1} ms; {} errors {error_codes:?} ({errors_outside} outside faults); degraded {:?}",
        answers.len(),
        answers.len() as f64 / load_seconds,
        percentile_ms(&mut check_steady, 0.5),
        percentile_ms(&mut check_steady, 0.99),
        if faulty { " outside faults" } else { "" },
        percentile_ms(&mut check_all, 0.99),
        percentile_ms(&mut check_all, 1.0),
        errors.len(),
        policy.degraded
    );
    println!(
        "drained in {:.1} s after the load; ledger {} rows, {} customers, {} subscriptions, {} invoices; \
         entitlements asked about {} users; Watch restarted {} times",
        drained.as_secs_f64(),
        verdict.ledger_rows,
        verdict.customers,
        verdict.subscriptions,
        verdict.invoices,
        verdict.users_checked,
        shared.watch_restarts.load(Ordering::Relaxed)
    );
    println!(
        "lost={} doubled={} wrong={} ledger={} entitlements={} undelivered={} crashed={}",
        verdict.lost.len(),
        verdict.doubled.len(),
        verdict.wrong.len(),
        verdict.ledger.len(),
        verdict.entitlements.len(),
        undelivered.len(),
        crashed.len()
    );
    println!(
        "policy violations={} ({} allowed answers checked against committed state, {} quota answers while Redis was away)",
        policy.violations.len(),
        policy.allowed_checked,
        policy.redis_checked
    );
    let show = |what: &str, list: &[String]| {
        for line in list.iter().take(10) {
            println!("  {what}: {line}");
        }
        if list.len() > 10 {
            println!("  {what}: ... {} more", list.len() - 10);
        }
    };
    show("lost", &verdict.lost);
    show("doubled", &verdict.doubled);
    show("wrong", &verdict.wrong);
    show("ledger", &verdict.ledger);
    show("entitlements", &verdict.entitlements);
    show("undelivered", &undelivered);
    show("crashed", &crashed);
    show("policy", &policy.violations);

    let failures = verdict.problems() + undelivered.len() + crashed.len() + policy.violations.len();
    if failures > 0 {
        println!("service logs: {}", stores.logs.display());
        bail!("{failures} violations");
    }
    let _ = std::fs::remove_dir_all(&stores.logs);

    let during = if faulty { ", outside faults" } else { "" };
    let rate = accepted.len() as f64 / load_seconds;
    let load = format!(
        "{} customers, {} events/s target, {:.0} checks/s{}",
        report::thousands(u64::from(options.customers)),
        options.rate,
        options.check_rate,
        if faulty {
            format!(", {} faults", windows.len())
        } else {
            String::new()
        }
    );
    Ok(vec![
        Figure::new("system", format!("signed webhooks accepted ({load})"))
            .measured(format!("{} distinct events", per_second(rate)))
            .goal(
                format!("≥ 95 % of {}", per_second(options.rate)),
                rate >= 0.95 * options.rate,
            ),
        Figure::new(
            "system",
            format!("freshness: webhook POST to the change on entitlements' Watch{during}"),
        )
        .measured(format!(
            "p99 {:.1} ms (p50 {:.1} ms, {} changes)",
            percentile_ms(&mut fresh_steady, 0.99),
            percentile_ms(&mut fresh_steady, 0.5),
            fresh_steady.len()
        )),
        Figure::new("system", format!("Check during the webhook load{during}")).measured(format!(
            "p99 {:.2} ms (p50 {:.2} ms, {} answers)",
            percentile_ms(&mut check_steady, 0.99),
            percentile_ms(&mut check_steady, 0.5),
            check_steady.len()
        )),
        Figure::new(
            "system",
            "final state against the events alone; Checks against their policy",
        )
        .measured(format!(
            "lost {}, doubled {}, wrong {}, policy violations {} ({} events, {} checks)",
            verdict.lost.len(),
            verdict.doubled.len(),
            verdict.wrong.len(),
            policy.violations.len(),
            report::thousands(accepted.len() as u64),
            report::thousands(answers.len() as u64)
        ))
        // A run with any of them has failed above, with the list.
        .goal("all 0", failures == 0),
    ])
}
