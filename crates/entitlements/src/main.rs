use anyhow::Context;
use tollgate_entitlements::{Application, Config};
use tollgate_runtime::{Env, telemetry};

/// Every call allocates and frees request, header and answer buffers across the
/// runtime's threads; glibc's malloc took about a tenth of the service's CPU under
/// load, mimalloc's per-thread free lists much less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env(&Env::process()).context("entitlements configuration")?;
    let _telemetry = telemetry::init("entitlements")?;
    tracing::info!(?config, "starting entitlements");
    Application::build(config)
        .await
        .context("starting entitlements")?
        .run_until_signal()
        .await
}
