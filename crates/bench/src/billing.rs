//! `tollgate-bench billing`: events applied per second by a real `billing`
//! process, exactly once, beside pgbench running a comparable transaction (one
//! insert + one single-row update) against the same PostgreSQL, in the same run.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;
use tollgate_broker::{Publisher, PublisherConfig};
use tollgate_events::topology::{BILLING_QUEUE, EVENTS_EXCHANGE};
use tollgate_test_support::{TestDatabase, TestVhost};

use crate::report::{Figure, per_second};
use crate::stats::median;

pub struct Options {
    events: usize,
    customers: usize,
    pgbench_clients: u32,
    pgbench_seconds: u32,
    rounds: usize,
    billing_bin: Option<PathBuf>,
}

impl Options {
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            events: 20_000,
            customers: 2_000,
            pgbench_clients: 8,
            pgbench_seconds: 10,
            rounds: 3,
            billing_bin: None,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--events" => options.events = value.parse()?,
                "--customers" => options.customers = value.parse()?,
                "--pgbench-clients" => options.pgbench_clients = value.parse()?,
                "--pgbench-seconds" => options.pgbench_seconds = value.parse()?,
                "--rounds" => options.rounds = value.parse()?,
                "--billing-bin" => options.billing_bin = Some(value.into()),
                other => bail!("unknown flag {other}"),
            }
        }
        if options.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        if options.customers == 0 || options.events < options.customers {
            bail!("--events must be at least --customers (> 0)");
        }
        Ok(options)
    }
}

/// Subscription lifecycles: each customer's subscription updated again and again.
fn event(n: usize, customers: usize) -> (String, Vec<u8>) {
    let customer = n % customers;
    let step = (n / customers) as i64;
    let status = if step % 5 == 3 { "past_due" } else { "active" };
    let price = if step % 2 == 0 {
        "price_pro_monthly"
    } else {
        "price_pro_plus_monthly"
    };
    let id = format!("evt_bench_{n:08}");
    let body = json!({
        "id": id, "object": "event", "type": "customer.subscription.updated",
        "created": 1_760_000_000 + step * 60, "livemode": false, "api_version": "2025-03-31.basil",
        "data": { "object": {
            "id": format!("sub_bench_{customer}"), "object": "subscription",
            "customer": format!("cus_bench_{customer}"), "status": status,
            "cancel_at_period_end": false,
            "items": { "object": "list", "data": [{ "current_period_start": 1_760_000_000,
                "current_period_end": 1_762_592_000,
                "price": { "id": price, "product": "prod_bench", "recurring": { "interval": "month" } } }] }
        }}
    });
    (id, serde_json::to_vec(&body).expect("JSON"))
}

fn billing_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("billing"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it (make bench-billing does)",
            path.display()
        );
    }
    Ok(path)
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let database = TestDatabase::create().await;
    let vhost = TestVhost::create();
    let plans = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/plans.toml");
    let billing_bin = billing_binary(options.billing_bin.clone())?;
    let spawn_billing = || {
        tokio::process::Command::new(&billing_bin)
            .env("DATABASE_URL", database.url())
            .env("AMQP_URL", vhost.amqp_url())
            .env("TOLLGATE_PLANS", &plans)
            .env("BILLING_ADDR", "127.0.0.1:0")
            .env("BILLING_API_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let pool = database.pool().await;

    // The schema, from `billing migrate`.
    let status = tokio::process::Command::new(&billing_bin)
        .arg("migrate")
        .env("DATABASE_URL", database.url())
        .env("AMQP_URL", vhost.amqp_url())
        .env("TOLLGATE_PLANS", &plans)
        .env("RUST_LOG", "warn")
        .status()
        .await?;
    if !status.success() {
        bail!("billing migrate failed");
    }
    let publisher = Publisher::start(PublisherConfig {
        url: vhost.amqp_url(),
        connection_name: "tollgate-bench".into(),
        channels: 4,
        confirm_timeout: Duration::from_secs(30),
        declare_topology: true,
    });
    if !publisher.wait_ready(Duration::from_secs(10)).await {
        bail!("broker not reachable");
    }
    pgbench_setup(&pool, &options).await?;
    let monitor_connection =
        tollgate_broker::connect(&vhost.amqp_url(), "tollgate-bench-monitor").await?;
    let monitor = monitor_connection.create_channel().await?;
    println!(
        "billing benchmark: {} rounds of {} customer.subscription.updated events for {} customers, \
         each beside {} s of pgbench; {} CPU core(s)",
        options.rounds,
        options.events,
        options.customers,
        options.pgbench_seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| round | billing (events/s) | pgbench (tx/s) | ratio |");
    println!("|---:|---:|---:|---:|");
    // Rounds alternate the two sides, so a change in the machine's load affects both.
    let (mut billing_rates, mut pgbench_rates) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        // 1. Queue this round's events while no billing runs.
        let first = round * options.events;
        let mut publishing = tokio::task::JoinSet::new();
        for worker in 0..16 {
            let publisher = publisher.clone();
            let (events, customers) = (options.events, options.customers);
            publishing.spawn(async move {
                for n in (first + worker..first + events).step_by(16) {
                    let (id, body) = event(n, customers);
                    let properties = BasicProperties::default()
                        .with_message_id(id.into())
                        .with_type("customer.subscription.updated".into())
                        .with_delivery_mode(2);
                    publisher
                        .publish(
                            EVENTS_EXCHANGE,
                            "customer.subscription.updated",
                            &body,
                            properties,
                        )
                        .await?;
                }
                Ok::<_, tollgate_broker::PublishError>(())
            });
        }
        while let Some(result) = publishing.join_next().await {
            result??;
        }

        // 2. Start billing and time how long it takes to apply them all.
        let target = (first + options.events) as i64;
        let started = Instant::now();
        let mut billing = spawn_billing().context("starting billing")?;
        // Watch the queue while it still holds ready messages: counting the ledger
        // every 50 ms would load the very PostgreSQL being measured (a count over
        // tens of thousands of rows each time). Only the tail is counted.
        loop {
            let ready = monitor
                .queue_declare(
                    BILLING_QUEUE.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?
                .message_count();
            if ready == 0 || started.elapsed() > Duration::from_secs(600) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM stripe_events")
                .fetch_one(&pool)
                .await?;
            if applied >= target {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("billing applied only {applied} of {target} events in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = started.elapsed();
        billing.kill().await.ok();
        let billing_rate = options.events as f64 / elapsed.as_secs_f64();

        // 3. The baseline, right after: pgbench, same server, a comparable transaction.
        let pgbench_tps = pgbench(&database, &options).await?;
        println!(
            "| {} | {billing_rate:.0} | {pgbench_tps:.0} | {:.2} |",
            round + 1,
            billing_rate / pgbench_tps
        );
        billing_rates.push(billing_rate);
        pgbench_rates.push(pgbench_tps);
    }
    let not_once: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stripe_events WHERE status <> 'processed' OR attempts <> 1",
    )
    .fetch_one(&pool)
    .await?;
    if not_once != 0 {
        bail!("{not_once} events were not applied exactly once");
    }
    let billing_rate = median(billing_rates);
    let pgbench_tps = median(pgbench_rates);
    let ratio = billing_rate / pgbench_tps;
    println!();
    println!(
        "| side (median of {} rounds) | rate (tx/s) |",
        options.rounds
    );
    println!("|---|---:|");
    println!(
        "| billing: events applied exactly once (ledger + snapshot + access + audit + outbox) | {billing_rate:.0} |"
    );
    println!(
        "| pgbench: insert + single-row update per transaction, {} clients | {pgbench_tps:.0} |",
        options.pgbench_clients
    );
    println!();
    println!("ratio billing / pgbench: {ratio:.2}  (goal >= 0.5)");
    Ok(vec![
        Figure::new(
            "billing",
            format!(
                "Stripe events applied exactly once, median of {} rounds of {}",
                options.rounds, options.events
            ),
        )
        .measured(per_second(billing_rate))
        .baseline(
            format!(
                "{} pgbench (insert + update, {} clients)",
                per_second(pgbench_tps),
                options.pgbench_clients
            ),
            ratio,
        )
        .goal("ratio ≥ 0.5", ratio >= 0.5),
    ])
}

async fn pgbench_setup(pool: &sqlx::PgPool, options: &Options) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE bench_events (id bigint PRIMARY KEY, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE TABLE bench_subscriptions (id int PRIMARY KEY, status text NOT NULL, updated_at timestamptz)")
        .execute(pool)
        .await?;
    sqlx::query(
        "INSERT INTO bench_subscriptions SELECT g, 'active', now() FROM generate_series(1, $1) g",
    )
    .bind(options.customers as i32)
    .execute(pool)
    .await?;
    Ok(())
}

async fn pgbench(database: &TestDatabase, options: &Options) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("tollgate-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "\\set sub random(1, {customers})\n\\set id random(1, 9000000000000)\n\
             BEGIN;\n\
             INSERT INTO bench_events (id, payload) VALUES (:id, '{{\"type\": \"customer.subscription.updated\"}}') ON CONFLICT DO NOTHING;\n\
             UPDATE bench_subscriptions SET status = 'active', updated_at = now() WHERE id = :sub;\n\
             COMMIT;\n",
            customers = options.customers
        ),
    )?;
    let output = tokio::process::Command::new("pgbench")
        .args(["-n", "-c", &options.pgbench_clients.to_string(), "-j", "2"])
        .args(["-T", &options.pgbench_seconds.to_string(), "-f"])
        .arg(&script)
        .arg(database.url())
        .output()
        .await
        .context("running pgbench (Debian: postgresql-contrib or the server package)")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .context("pgbench printed no tps")
}
