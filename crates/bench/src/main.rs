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
mod stats;
mod system;

use anyhow::bail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ingest") => ingest::run(ingest::Options::parse(args)?).await,
        Some("billing") => billing::run(billing::Options::parse(args)?).await,
        Some("entitlements") => entitlements::run(entitlements::Options::parse(args)?).await,
        Some("system") => system::run(system::Options::parse(args)?).await,
        // The baseline server `entitlements` starts in a process of its own.
        Some("entitlements-echo") => {
            let addr = args
                .next()
                .unwrap_or_else(|| "127.0.0.1:50099".into())
                .parse()?;
            entitlements::serve_echo(addr).await
        }
        _ => bail!(
            "usage: tollgate-bench ingest [--concurrency N] [--seconds S] [--rounds R] [--ingest-bin PATH]\n       \
             tollgate-bench billing [--events N] [--customers N] [--pgbench-clients N] [--pgbench-seconds S] [--billing-bin PATH]\n       \
             tollgate-bench entitlements [--concurrency N] [--channels N] [--seconds S] [--rounds R] [--customers N] [--revocations N] [--background-rate N]\n       \
             tollgate-bench system [--customers N] [--rate N] [--seconds S] [--check-rate N] [--faults none|proxy|real] [--fault-list billing,rabbitmq,postgres,redis] [--outage S] [--settle S]"
        ),
    }
}
