use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hmac::{Hmac, KeyInit, Mac};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueuePurgeOptions};
use lapin::{BasicProperties, Confirmation};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_events::topology::{BILLING_QUEUE, EVENTS_EXCHANGE, PERSISTENT};
use tollgate_test_support::{TestVhost, stripe_fixture, unix_now};

use crate::report::{Figure, per_second};
use crate::stats::{Phase, median};

const SECRET: &str = "whsec_bench_secret";
const FIXTURE: &str = "complete/invoice.paid.stripe-sync-engine.json";
/// Fixed-width id so each request only overwrites digits in place.
const ID_PLACEHOLDER: &str = "evt_bench_0000000000000000";

pub struct Options {
    concurrency: usize,
    seconds: u64,
    rounds: usize,
    ingest_bin: Option<PathBuf>,
}

impl Options {
    pub fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut options = Self {
            concurrency: 64,
            seconds: 5,
            rounds: 3,
            ingest_bin: None,
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--concurrency" => options.concurrency = value.parse()?,
                "--seconds" => options.seconds = value.parse()?,
                "--rounds" => options.rounds = value.parse()?,
                "--ingest-bin" => options.ingest_bin = Some(value.into()),
                other => bail!("unknown flag {other}"),
            }
        }
        Ok(options)
    }
}

/// The fixture as one compact line with a fixed-width id we can rewrite.
fn payload_template() -> anyhow::Result<(Vec<u8>, usize)> {
    let mut event: serde_json::Value = serde_json::from_slice(&stripe_fixture(FIXTURE))?;
    event["id"] = ID_PLACEHOLDER.into();
    let body = serde_json::to_vec(&event)?;
    let at = body
        .windows(ID_PLACEHOLDER.len())
        .position(|w| w == ID_PLACEHOLDER.as_bytes())
        .context("placeholder in body")?;
    Ok((body, at + "evt_bench_".len()))
}

fn stamp_id(body: &mut [u8], digits_at: usize, n: u64) {
    let digits = format!("{n:016}");
    body[digits_at..digits_at + 16].copy_from_slice(digits.as_bytes());
}

fn ingest_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("ingest"),
    };
    if !path.exists() {
        bail!(
            "{} not found: build it (make bench-ingest does)",
            path.display()
        );
    }
    Ok(path)
}

pub async fn run(options: Options) -> anyhow::Result<Vec<Figure>> {
    let vhost = TestVhost::create();
    let (template, digits_at) = payload_template()?;
    let port = free_port()?;
    let mut child = tokio::process::Command::new(ingest_binary(options.ingest_bin.clone())?)
        .env("AMQP_URL", vhost.amqp_url())
        .env("INGEST_ADDR", format!("127.0.0.1:{port}"))
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting ingest")?;
    wait_ready(port).await?;

    let connection = tollgate_broker::connect(&vhost.amqp_url(), "tollgate-bench").await?;
    let admin = connection.create_channel().await?;
    let channels = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            channels.push(channel);
        }
        channels
    };

    println!(
        "ingest benchmark: {} B payload ({}), concurrency {}, {} round(s) of {} s per side, {} CPU core(s)",
        template.len(),
        FIXTURE,
        options.concurrency,
        options.rounds,
        options.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let duration = Duration::from_secs(options.seconds);
    let ids = Arc::new(AtomicU64::new(1));
    let mut raw_phases = Vec::new();
    let mut ingest_phases = Vec::new();
    let mut ratios = Vec::new();
    // Warm-up so neither side pays for connection set-up or JIT-like first-touch costs.
    let _ = raw_phase(
        &channels,
        &template,
        digits_at,
        &ids,
        options.concurrency,
        Duration::from_secs(1),
    )
    .await;
    let _ = http_phase(
        port,
        &template,
        digits_at,
        &ids,
        options.concurrency,
        Duration::from_secs(1),
    )
    .await;
    for round in 1..=options.rounds {
        admin
            .queue_purge(BILLING_QUEUE.into(), QueuePurgeOptions::default())
            .await?;
        let raw = raw_phase(
            &channels,
            &template,
            digits_at,
            &ids,
            options.concurrency,
            duration,
        )
        .await;
        admin
            .queue_purge(BILLING_QUEUE.into(), QueuePurgeOptions::default())
            .await?;
        let ingest = http_phase(
            port,
            &template,
            digits_at,
            &ids,
            options.concurrency,
            duration,
        )
        .await;
        let ratio = ingest.rate() / raw.rate();
        println!(
            "round {round}: raw publish+confirm {:>8.0}/s (p99 {:.2} ms) | ingest {:>8.0}/s (p99 {:.2} ms, {} errors) | ratio {:.2}",
            raw.rate(),
            raw.percentile_ms(0.99),
            ingest.rate(),
            ingest.percentile_ms(0.99),
            ingest.errors,
            ratio
        );
        ratios.push(ratio);
        raw_phases.push(raw);
        ingest_phases.push(ingest);
    }
    admin
        .queue_purge(BILLING_QUEUE.into(), QueuePurgeOptions::default())
        .await?;
    let raw = Phase::merge(&raw_phases);
    let ingest = Phase::merge(&ingest_phases);
    let ratio = median(ratios);
    println!();
    println!("| side | rate (msg/s) | p50 (ms) | p99 (ms) | errors |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| raw lapin publish + confirm | {:.0} | {:.2} | {:.2} | {} |",
        raw.rate(),
        raw.percentile_ms(0.5),
        raw.percentile_ms(0.99),
        raw.errors
    );
    println!(
        "| ingest (HTTP + verify + publish + confirm) | {:.0} | {:.2} | {:.2} | {} |",
        ingest.rate(),
        ingest.percentile_ms(0.5),
        ingest.percentile_ms(0.99),
        ingest.errors
    );
    println!();
    println!("ratio ingest / raw broker (median of rounds): {ratio:.2}  (goal >= 0.85)");
    child.kill().await.ok();
    Ok(vec![
        Figure::new(
            "ingest",
            format!(
                "signed webhooks accepted (verified, published, confirmed), concurrency {}",
                options.concurrency
            ),
        )
        .measured(per_second(ingest.rate()))
        .baseline(
            format!("{} raw lapin publish + confirm", per_second(raw.rate())),
            ratio,
        )
        .goal("ratio ≥ 0.85", ratio >= 0.85),
        Figure::new("ingest", "webhook p99 at full load").measured(format!(
            "{:.2} ms (raw {:.2} ms)",
            ingest.percentile_ms(0.99),
            raw.percentile_ms(0.99)
        )),
    ])
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
            let request = "GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
            if stream.write_all(request.as_bytes()).await.is_ok() {
                let mut response = Vec::new();
                let _ = stream.read_to_end(&mut response).await;
                if response.starts_with(b"HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("ingest did not become ready on port {port}")
}

/// The physical limit: the same payloads published straight to the broker.
async fn raw_phase(
    channels: &[lapin::Channel],
    template: &[u8],
    digits_at: usize,
    ids: &Arc<AtomicU64>,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let mut body = template.to_vec();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut phase = Phase::default();
                while Instant::now() < deadline {
                    let n = ids.fetch_add(1, Ordering::Relaxed);
                    stamp_id(&mut body, digits_at, n);
                    let id = format!("evt_bench_{n:016}");
                    let properties = BasicProperties::default()
                        .with_message_id(id.into())
                        .with_type("invoice.paid".into())
                        .with_timestamp(unix_now() as u64)
                        .with_content_type("application/json".into())
                        .with_delivery_mode(PERSISTENT);
                    let sent = Instant::now();
                    let confirmed = match channel
                        .basic_publish(
                            EVENTS_EXCHANGE.into(),
                            "invoice.paid".into(),
                            BasicPublishOptions {
                                mandatory: true,
                                ..BasicPublishOptions::default()
                            },
                            &body,
                            properties,
                        )
                        .await
                    {
                        Ok(confirm) => matches!(confirm.await, Ok(Confirmation::Ack(None))),
                        Err(_) => false,
                    };
                    if confirmed {
                        phase.ok += 1;
                        phase.latencies_us.push(sent.elapsed().as_micros() as u32);
                    } else {
                        phase.errors += 1;
                    }
                }
                phase
            })
        })
        .collect();
    let mut phases = Vec::new();
    for task in tasks {
        phases.push(task.await.expect("publisher task"));
    }
    let mut merged = Phase::merge(&phases);
    merged.elapsed = started.elapsed();
    merged
}

/// Signed webhooks over keep-alive HTTP/1.1 connections, one per worker, with a
/// minimal client so the load generator steals as little CPU as possible.
async fn http_phase(
    port: u16,
    template: &[u8],
    digits_at: usize,
    ids: &Arc<AtomicU64>,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut body = template.to_vec();
            let ids = ids.clone();
            tokio::spawn(async move {
                let mut phase = Phase::default();
                let mut stream = match TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(s) => s,
                    Err(_) => return phase,
                };
                stream.set_nodelay(true).ok();
                let key = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
                let mut request = Vec::with_capacity(body.len() + 256);
                let mut buffer = vec![0u8; 4096];
                while Instant::now() < deadline {
                    let n = ids.fetch_add(1, Ordering::Relaxed);
                    stamp_id(&mut body, digits_at, n);
                    let t = unix_now().to_string();
                    let mut mac = key.clone();
                    mac.update(t.as_bytes());
                    mac.update(b".");
                    mac.update(&body);
                    let signature = hex::encode(mac.finalize().into_bytes());
                    request.clear();
                    request.extend_from_slice(
                        format!(
                            "POST /webhook HTTP/1.1\r\nHost: ingest\r\nContent-Type: application/json; charset=utf-8\r\n\
                             Stripe-Signature: t={t},v1={signature}\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    request.extend_from_slice(&body);
                    let sent = Instant::now();
                    if stream.write_all(&request).await.is_err() {
                        phase.errors += 1;
                        break;
                    }
                    match read_response(&mut stream, &mut buffer).await {
                        Some(200) => {
                            phase.ok += 1;
                            phase.latencies_us.push(sent.elapsed().as_micros() as u32);
                        }
                        Some(_) => phase.errors += 1,
                        None => {
                            phase.errors += 1;
                            break;
                        }
                    }
                }
                phase
            })
        })
        .collect();
    let mut phases = Vec::new();
    for task in tasks {
        phases.push(task.await.expect("http task"));
    }
    let mut merged = Phase::merge(&phases);
    merged.elapsed = started.elapsed();
    merged
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut [u8]) -> Option<u16> {
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buffer[filled..]).await.ok()?;
        if read == 0 {
            return None;
        }
        filled += read;
        let text = &buffer[..filled];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&text[..end]).ok()?;
            let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            let total = end + 4 + length;
            while filled < total {
                let read = stream.read(&mut buffer[filled..]).await.ok()?;
                if read == 0 {
                    return None;
                }
                filled += read;
            }
            return Some(status);
        }
        if filled == buffer.len() {
            return None;
        }
    }
}
