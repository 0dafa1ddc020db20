use anyhow::Context;
use tollgate_entitlements::{Application, Config};
use tollgate_runtime::{Env, telemetry};

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
