use anyhow::Context;
use tollgate_billing::{Application, Config, db};
use tollgate_runtime::{Env, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env(&Env::process()).context("billing configuration")?;
    let _telemetry = telemetry::init("billing")?;
    match std::env::args().nth(1).as_deref() {
        // `billing migrate`: apply migrations and exit (a Kubernetes Job / init container).
        Some("migrate") => {
            let pool = db::pool(&config.database_url, 1)?;
            db::MIGRATOR
                .run(&pool)
                .await
                .context("applying migrations")?;
            tracing::info!("migrations applied");
            Ok(())
        }
        None => {
            tracing::info!(?config, "starting billing");
            Application::build(config).await?.run_until_signal().await
        }
        Some(other) => anyhow::bail!("unknown command `{other}` (commands: migrate)"),
    }
}
