//! `tollgate-bench <service>`: measures a service against the machine's own
//! limit, both in the same run, and prints the ratio.
//!
//! `tollgate-bench ingest`: signed webhooks through a running `ingest` process
//! versus a plain lapin publisher sending the same payloads with confirms, at the
//! same concurrency, to the same broker and topology.
//!
//! `tollgate-bench billing`: events applied per second by a `billing` process,
//! exactly once, versus pgbench running a comparable transaction on the same server.

mod billing;
mod ingest;
mod stats;

use anyhow::bail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("ingest") => ingest::run(ingest::Options::parse(args)?).await,
        Some("billing") => billing::run(billing::Options::parse(args)?).await,
        _ => bail!(
            "usage: tollgate-bench ingest [--concurrency N] [--seconds S] [--rounds R] [--ingest-bin PATH]\n       \
             tollgate-bench billing [--events N] [--customers N] [--pgbench-clients N] [--pgbench-seconds S] [--billing-bin PATH]"
        ),
    }
}
