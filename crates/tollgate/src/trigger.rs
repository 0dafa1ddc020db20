use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tollgate_events::WebhookSecrets;
use tollgate_events::signature::{SigningSecret, sign_header};

use crate::fixtures;

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let mut name = None;
    let mut url = std::env::var("INGEST_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:8080/webhook".into());
    let mut livemode = false;
    let mut count = 1u32;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--list" => {
                for name in fixtures::names() {
                    println!("{name}");
                }
                return Ok(());
            }
            "--url" => url = args.next().context("--url needs a value")?.clone(),
            "--livemode" => livemode = true,
            "--count" => count = args.next().context("--count needs a value")?.parse()?,
            other if other.starts_with("--") => bail!("unknown flag {other}"),
            other => name = Some(other.to_string()),
        }
    }
    let name = name.context("which event? (tollgate trigger --list)")?;
    let (event_type, mut event) = fixtures::sample(&name)
        .with_context(|| format!("no sample for `{name}` (tollgate trigger --list)"))?;
    let secrets = std::env::var("STRIPE_WEBHOOK_SECRET")
        .context("STRIPE_WEBHOOK_SECRET must be set to the secret ingest verifies with")?;
    // Validate the list the way ingest does, then sign with the first secret.
    WebhookSecrets::parse(&secrets).context("STRIPE_WEBHOOK_SECRET")?;
    let secret = SigningSecret::new(secrets.split(',').next().unwrap_or_default().trim());

    let client = reqwest::Client::new();
    for _ in 0..count {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let id = format!("evt_local_{}", uuid::Uuid::new_v4().simple());
        event["id"] = id.clone().into();
        event["created"] = now.into();
        event["livemode"] = livemode.into();
        let body = serde_json::to_vec(&event)?;
        let response = client
            .post(&url)
            .header("Content-Type", "application/json; charset=utf-8")
            .header("Stripe-Signature", sign_header(&secret, now, &body))
            .body(body)
            .send()
            .await
            .with_context(|| format!("sending to {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        println!("{event_type} {id} -> {} {text}", status.as_u16());
        if !status.is_success() {
            bail!("ingest answered {status}");
        }
    }
    Ok(())
}
