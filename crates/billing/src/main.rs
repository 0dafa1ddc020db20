use anyhow::Context;
use tollgate_billing::{Application, Config, db};
use tollgate_runtime::{Env, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env(&Env::process()).context("billing configuration")?;
    let _telemetry = telemetry::init("billing")?;
    match std::env::args().nth(1).as_deref() {
        // `billing migrate`: create the database if missing, apply migrations and exit
        // (`make run`, a Kubernetes Job or init container).
        Some("migrate") => {
            use sqlx::migrate::MigrateDatabase;
            if !sqlx::Postgres::database_exists(&config.database_url).await? {
                sqlx::Postgres::create_database(&config.database_url).await?;
                tracing::info!("database created");
            }
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
        // `billing retention`: drop old payloads and checkout attempts once and exit (a CronJob).
        Some("retention") => {
            let days = u64::from(config.payload_retention_days.max(1));
            let pool = db::pool(&config.database_url, 1)?;
            let cleared = tollgate_billing::retention::drop_old_payloads(
                &pool,
                std::time::Duration::from_secs(days * 86_400),
            )
            .await?;
            tracing::info!(cleared, days, "old event payloads dropped");
            let forgotten = tollgate_billing::retention::drop_old_checkout_attempts(&pool).await?;
            tracing::info!(forgotten, "old checkout attempts forgotten");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown command `{other}` (commands: migrate, retention)"),
    }
}
