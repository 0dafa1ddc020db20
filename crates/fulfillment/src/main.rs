use anyhow::Context;
use tollgate_fulfillment::{Application, Config};
use tollgate_runtime::{Env, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env(&Env::process()).context("fulfillment configuration")?;
    let _telemetry = telemetry::init("fulfillment")?;
    tracing::info!(?config, "starting fulfillment");
    Application::build(config)
        .context("starting fulfillment")?
        .run_until_signal()
        .await
        .context("serving")
}
