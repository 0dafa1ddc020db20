//! `tollgate-bench <service>`: measures a service against the machine's own
//! limit, both in the same run, and prints the ratio.
//!
//! `tollgate-bench ingest`: signed webhooks through a running `ingest` process
//! versus a plain lapin publisher sending the same payloads with confirms, at the
//! same concurrency, to the same broker and topology.
//!
//! `tollgate-bench billing`: events applied per second by a `billing` process,
//! exactly once, versus pgbench running a comparable transaction on the same server.
//!
//! `tollgate-bench entitlements`: Check against a bare tonic echo server and against
//! a PostgreSQL query per call, revocation latency from webhook to denied Check,
//! and credit consumptions per second.
//!
//! `tollgate-bench system`: the whole system (ingest, two billing replicas,
//! entitlements) under a realistic webhook load and a Check load: webhook rate,
//! webhook-to-entitlements freshness, Check latency, and the final state checked
//! against the events sent; with `--faults`, outages injected during the load.

mod billing;
mod entitlements;
mod ingest;
mod report;
mod stats;
mod system;

use anyhow::{Context, bail};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ingest") => ingest::run(ingest::Options::parse(args)?).await.map(drop),
        Some("billing") => billing::run(billing::Options::parse(args)?).await.map(drop),
        Some("entitlements") => entitlements::run(entitlements::Options::parse(args)?)
            .await
            .map(drop),
        Some("all") => all(args).await,
        Some("system") => system::run(system::Options::parse(args)?).await.map(drop),
        // The baselines `entitlements` starts, each in a process of its own.
        Some("entitlements-echo") => {
            entitlements::serve_echo(listen_addr(args, "127.0.0.1:50099")?).await
        }
        Some("tcp-echo") => {
            entitlements::serve_tcp_echo(listen_addr(args, "127.0.0.1:50098")?).await
        }
        // One Check (or TCP) phase from a process of its own, to measure by hand.
        Some("entitlements-load") => {
            entitlements::load(entitlements::LoadOptions::parse(args)?).await
        }
        _ => bail!(
            "usage: tollgate-bench ingest [--concurrency N] [--seconds S] [--rounds R] [--ingest-bin PATH]\n       \
             tollgate-bench billing [--events N] [--customers N] [--pgbench-clients N] [--pgbench-seconds S] [--billing-bin PATH]\n       \
             tollgate-bench entitlements [--concurrency N] [--channels N] [--seconds S] [--rounds R] [--customers N] [--revocations N] [--background-rate N]\n       \
             tollgate-bench all [--out docs/benchmarks.md] [--readme README.md]\n       \
             tollgate-bench entitlements-echo ADDR | tcp-echo ADDR\n       \
             tollgate-bench entitlements-load --port P [--tcp] [--rate R] [--concurrency N] [--channels N] [--seconds S] [--customers N]\n       \
             tollgate-bench system [--customers N] [--rate N] [--seconds S] [--check-rate N] [--faults none|proxy|real] [--fault-list billing,rabbitmq,postgres,redis] [--outage S] [--settle S]"
        ),
    }
}

/// The first argument, or `default`, as the address a baseline server listens on.
fn listen_addr(
    mut args: impl Iterator<Item = String>,
    default: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    let addr = args.next().unwrap_or_else(|| default.into());
    addr.parse()
        .with_context(|| format!("{addr}: not an address to listen on (host:port)"))
}

/// Every benchmark with its defaults, one after the other; the figures go to
/// `docs/benchmarks.md` and into the README.
async fn all(mut args: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let root = std::env::current_dir()?;
    let (mut out, mut readme) = (root.join("docs/benchmarks.md"), root.join("README.md"));
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--out" => out = value.into(),
            "--readme" => readme = value.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    let mut figures = Vec::new();
    println!("== ingest ==");
    figures.extend(ingest::run(ingest::Options::parse(std::iter::empty())?).await?);
    println!("\n== billing ==");
    figures.extend(billing::run(billing::Options::parse(std::iter::empty())?).await?);
    println!("\n== entitlements ==");
    figures.extend(entitlements::run(entitlements::Options::parse(std::iter::empty())?).await?);
    println!("\n== system ==");
    figures.extend(system::run(system::Options::parse(std::iter::empty())?).await?);
    let database = tollgate_test_support::TestDatabase::create().await;
    let machine = report::Machine::describe(&database.url()).await;
    std::fs::write(&out, report::document(&figures, &machine, "make bench"))?;
    report::quote_in_readme(&readme, &report::table(&figures))?;
    println!("\n{}", report::table(&figures));
    println!(
        "written to {} and quoted in {}",
        out.display(),
        readme.display()
    );
    Ok(())
}
