//! `tollgate`: the operator's command line.
//!
//! `tollgate trigger <event type>` is our local `stripe trigger`: it takes a real
//! Stripe payload of that type, gives it a fresh id and timestamp, signs it the
//! way Stripe does, and POSTs it to a running ingest. `dead-letters` reviews and
//! replays events billing gave up on; `reconcile` and `backfill` repair billing state
//! from Stripe's API (docs/operations.md); `test-users` manages who tests for free.

mod fixtures;
mod trigger;

use std::process::ExitCode;

const USAGE_TEMPLATE: &str = "\
usage:
  tollgate dead-letters list [--all]
  tollgate dead-letters show <id>
  tollgate dead-letters replay <id> [--by NAME]
      Events billing gave up on (DATABASE_URL; replay also needs AMQP_URL).
      Replay puts one back on the billing queue after its cause is fixed.
{test_users}
  tollgate trigger <event type> [--url URL] [--livemode] [--count N]
      Sign a sample Stripe event and send it to ingest.
      URL defaults to $INGEST_URL, else http://127.0.0.1:8080/webhook.
      The secret is the first of $STRIPE_WEBHOOK_SECRET.
  tollgate trigger --list
      The event types with a sample payload.
  tollgate reconcile
      Apply the Stripe events webhooks missed, from the stored cursor (DATABASE_URL,
      STRIPE_SECRET_KEY; STRIPE_API_BASE, TOLLGATE_PLANS). Stripe keeps events for 30 days.
  tollgate backfill
      Re-list every Stripe customer and subscription (all statuses) and repair billing
      state from them (same variables).
  Exit status: 0 done, 1 failed, 2 done but needs attention (events lost past Stripe's
  30 days, or new dead letters).";

fn usage() -> String {
    USAGE_TEMPLATE.replace("{test_users}", tollgate::test_users::USAGE)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("trigger") => trigger::run(&args[1..]).await,
        Some("dead-letters") => dead_letters_command(&args[1..]).await,
        Some("reconcile") => return repair_command(Repair::Reconcile).await,
        Some("backfill") => return repair_command(Repair::Backfill).await,
        Some("test-users") => test_users_command(&args[1..]).await,
        Some("-h" | "--help" | "help") | None => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n{}", usage())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

enum Repair {
    Reconcile,
    Backfill,
}

/// `tollgate reconcile` / `tollgate backfill`: the report on stdout, warnings and
/// progress on stderr.
async fn repair_command(which: Repair) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
    let env = tollgate_runtime::Env::process();
    let attention = match which {
        Repair::Reconcile => tollgate::reconcile::reconcile(&env).await.map(|report| {
            print!("{report}");
            report.events_may_be_lost() || !report.counts().dead_lettered.is_empty()
        }),
        Repair::Backfill => tollgate::reconcile::backfill(&env).await.map(|report| {
            print!("{report}");
            !report.customers.counts.dead_lettered.is_empty()
                || !report.subscriptions.counts.dead_lettered.is_empty()
        }),
    };
    match attention {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => {
            eprintln!("tollgate: done, but see the warnings above");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn database() -> anyhow::Result<sqlx::PgPool> {
    use anyhow::Context;
    let database_url = std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?;
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&database_url)
        .await
        .context("connecting to DATABASE_URL")
}

async fn test_users_command(args: &[String]) -> anyhow::Result<()> {
    tollgate::test_users::run(&database().await?, args).await
}

async fn dead_letters_command(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    use tollgate::dead_letters;

    let pool = database().await?;
    let id = |position: usize| -> anyhow::Result<i64> {
        args.get(position)
            .context("which dead letter? (tollgate dead-letters list)")?
            .parse()
            .context("a dead letter id is a number")
    };
    match args.first().map(String::as_str) {
        Some("list") => {
            let all = args.iter().any(|a| a == "--all");
            println!(
                "{:>6}  {:<25}  {:<32}  {:<30}  {:>8}  {:<9}  error",
                "id", "created", "event", "type", "attempts", "status"
            );
            for letter in dead_letters::list(&pool, all).await? {
                let error: String = letter.error.chars().take(80).collect();
                println!(
                    "{:>6}  {:<25}  {:<32}  {:<30}  {:>8}  {:<9}  {error}",
                    letter.id,
                    letter.created_at.to_rfc3339(),
                    letter.event_id.as_deref().unwrap_or("-"),
                    letter.event_type.as_deref().unwrap_or(&letter.routing_key),
                    letter.attempts,
                    letter.resolution,
                );
            }
        }
        Some("show") => {
            let letter = dead_letters::get(&pool, id(1)?).await?;
            println!("id:          {}", letter.id);
            println!("event:       {}", letter.event_id.as_deref().unwrap_or("-"));
            println!(
                "type:        {}",
                letter.event_type.as_deref().unwrap_or("-")
            );
            println!("routing key: {}", letter.routing_key);
            println!("attempts:    {}", letter.attempts);
            println!("status:      {}", letter.resolution);
            println!("created:     {}", letter.created_at.to_rfc3339());
            if let Some(at) = letter.resolved_at {
                println!(
                    "resolved:    {} by {}",
                    at.to_rfc3339(),
                    letter.resolved_by.as_deref().unwrap_or("?")
                );
            }
            println!("error:       {}", letter.error);
            println!("payload:");
            match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
                Ok(json) => println!("{}", serde_json::to_string_pretty(&json)?),
                Err(_) => println!("{}", String::from_utf8_lossy(&letter.payload)),
            }
        }
        Some("replay") => {
            let amqp_url = std::env::var("AMQP_URL").context("AMQP_URL must be set")?;
            let by = match args.iter().position(|a| a == "--by") {
                Some(i) => args.get(i + 1).context("--by needs a name")?.clone(),
                None => std::env::var("USER").unwrap_or_else(|_| "operator".into()),
            };
            let id = id(1)?;
            dead_letters::replay(&pool, &amqp_url, id, &by).await?;
            println!("dead letter {id} replayed onto the billing queue");
        }
        _ => anyhow::bail!("{}", usage()),
    }
    Ok(())
}
