use anyhow::Context;
use tollgate_ingest::{Application, Config};
use tollgate_runtime::{Env, telemetry};

/// Every request allocates and frees a few buffers across threads; mimalloc's
/// per-thread free lists make that markedly cheaper than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env(&Env::process()).context("ingest configuration")?;
    let _telemetry = telemetry::init("ingest")?;
    tracing::info!(?config, "starting ingest");
    Application::build(config)
        .context("starting the HTTP server")?
        .run_until_signal()
        .await
        .context("serving")
}
