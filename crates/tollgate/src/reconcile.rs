//! `tollgate reconcile` and `tollgate backfill`: repair billing state from Stripe's API
//! (tollgate_billing::reconcile does the work; this reads the environment and reports).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tollgate_billing::reconcile::{BackfillReport, ReconcileReport, Reconciler};
use tollgate_plans::Plans;
use tollgate_runtime::config::Env;
use tollgate_stripe::{Refetcher, StripeClient, StripeConfig};

/// What both commands read: `DATABASE_URL`, `STRIPE_SECRET_KEY` (required), `STRIPE_API_BASE`,
/// `STRIPE_TIMEOUT_MS`, `STRIPE_REFETCH_RATE`, `TOLLGATE_PLANS`.
pub fn reconciler(env: &Env) -> anyhow::Result<Reconciler> {
    let database_url = env
        .required_string("DATABASE_URL")
        .context("the billing database")?;
    let stripe = StripeConfig::from_env(env).context("the Stripe API")?;
    let client = StripeClient::from_config(&stripe)
        .context("the Stripe client")?
        .context("STRIPE_SECRET_KEY must be set: reconcile and backfill read Stripe's API")?;
    let plans_path: PathBuf = env.or(
        "TOLLGATE_PLANS",
        PathBuf::from(tollgate_plans::DEFAULT_PATH),
    )?;
    let plans = Plans::load(Some(&plans_path)).context("TOLLGATE_PLANS (the plans file)")?;
    let pool = tollgate_billing::db::pool(&database_url, 2).context("DATABASE_URL")?;
    let refetcher = Refetcher::new(Some(client.clone()), stripe.refetch_rate);
    Ok(Reconciler::new(pool, Arc::new(plans), client, refetcher))
}

pub async fn reconcile(env: &Env) -> anyhow::Result<ReconcileReport> {
    Ok(reconciler(env)?.reconcile().await?)
}

pub async fn backfill(env: &Env) -> anyhow::Result<BackfillReport> {
    Ok(reconciler(env)?.backfill().await?)
}
