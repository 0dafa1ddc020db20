//! `tollgate`: the operator's command line.
//!
//! `tollgate trigger <event type>` is our local `stripe trigger`: it takes a real
//! Stripe payload of that type, gives it a fresh id and timestamp, signs it the
//! way Stripe does, and POSTs it to a running ingest.

mod fixtures;
mod trigger;

use std::process::ExitCode;

const USAGE: &str = "\
usage:
  tollgate trigger <event type> [--url URL] [--livemode] [--count N]
      Sign a sample Stripe event and send it to ingest.
      URL defaults to $INGEST_URL, else http://127.0.0.1:8080/webhook.
      The secret is the first of $STRIPE_WEBHOOK_SECRET.
  tollgate trigger --list
      The event types with a sample payload.";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("trigger") => trigger::run(&args[1..]).await,
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(anyhow::anyhow!("unknown command `{other}`\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tollgate: {error:#}");
            ExitCode::FAILURE
        }
    }
}
