//! Faults injected during the load, one at a time, each bounded in time: a billing
//! replica SIGKILLed (and started again), RabbitMQ, PostgreSQL and Redis gone and back.
//!
//! The stores go away either through the loopback proxies in front of them (only this
//! run's processes lose them; what other tests on the machine use is untouched) or,
//! with `--faults real`, by stopping and starting the machine's real services with
//! scripts/chaos-service.sh (`make chaos` only: every other user of those services
//! sees the outage too). A guard restarts any service still stopped when the harness
//! ends, however it ends; `make chaos`'s shell trap does the same once more.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tollgate_test_support::workspace_root;

use super::stack::{Service, Stores};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    None,
    Proxy,
    Real,
}

impl Mode {
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "none" => Self::None,
            "proxy" => Self::Proxy,
            "real" => Self::Real,
            other => bail!("--faults {other}: none, proxy or real"),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    BillingKill,
    Broker,
    Database,
    Redis,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::BillingKill,
        Fault::Broker,
        Fault::Database,
        Fault::Redis,
    ];

    pub fn parse(value: &str) -> anyhow::Result<Self> {
        Ok(match value {
            "billing" => Self::BillingKill,
            "rabbitmq" => Self::Broker,
            "postgres" => Self::Database,
            "redis" => Self::Redis,
            other => bail!("unknown fault {other}: billing, rabbitmq, postgres, redis"),
        })
    }

    pub fn describe(self, mode: Mode) -> &'static str {
        match (self, mode) {
            (Self::BillingKill, _) => "billing-0 SIGKILLed, started again",
            (Self::Broker, Mode::Real) => "RabbitMQ stopped, started again",
            (Self::Database, Mode::Real) => "PostgreSQL stopped, started again",
            (Self::Redis, Mode::Real) => "Redis stopped, started again",
            (Self::Broker, _) => "RabbitMQ cut off (proxy), restored",
            (Self::Database, _) => "PostgreSQL cut off (proxy), restored",
            (Self::Redis, _) => "Redis cut off (proxy), restored",
        }
    }

    fn service(self) -> Option<&'static str> {
        match self {
            Self::BillingKill => None,
            Self::Broker => Some("rabbitmq"),
            Self::Database => Some("postgres"),
            Self::Redis => Some("redis"),
        }
    }
}

/// When a fault was in force, on the harness's clock (microseconds).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub fault: Fault,
    /// The fault began.
    pub down_us: u64,
    /// The service was back (the process ready again, the store answering).
    pub up_us: u64,
}

impl Window {
    /// Whether `t` falls in the fault or the `settle` after it.
    pub fn covers(&self, t: u64, settle_us: u64) -> bool {
        t >= self.down_us && t <= self.up_us + settle_us
    }
}

/// Starts again, when dropped, a real service this harness stopped.
struct Restore(Option<&'static str>);

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(service) = self.0.take()
            && let Err(e) = service_script("start", service)
        {
            eprintln!(
                "chaos: could not start {service} again: {e}; run scripts/ensure-services.sh"
            );
        }
    }
}

fn service_script(action: &str, service: &str) -> anyhow::Result<()> {
    let script = workspace_root().join("scripts/chaos-service.sh");
    let status = Command::new(&script)
        .args([action, service])
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} {action} {service} failed ({status})", script.display());
    }
    Ok(())
}

fn proxy(stores: &Stores, fault: Fault) -> anyhow::Result<&tollgate_test_support::TcpProxy> {
    let proxies = stores.proxies.as_ref().context("no proxies in this run")?;
    Ok(match fault {
        Fault::Broker => &proxies.rabbitmq,
        Fault::Database => &proxies.postgres,
        Fault::Redis => &proxies.redis,
        Fault::BillingKill => bail!("billing has no proxy"),
    })
}

/// Injects `fault` for `outage` and undoes it; `now` reads the harness clock.
pub async fn inject(
    fault: Fault,
    mode: Mode,
    outage: Duration,
    stores: &Stores,
    victim: &mut Service,
    now: impl Fn() -> u64,
) -> anyhow::Result<Window> {
    let down_us = now();
    match (fault, mode) {
        (_, Mode::None) => bail!("no faults in this run"),
        (Fault::BillingKill, _) => {
            victim.kill().await?;
            tokio::time::sleep(outage).await;
            victim.start().await?;
        }
        (_, Mode::Proxy) => {
            let proxy = proxy(stores, fault)?;
            proxy.cut();
            tokio::time::sleep(outage).await;
            proxy.restore();
        }
        (_, Mode::Real) => {
            let service = fault.service().expect("a store");
            let guard = Restore(Some(service));
            tokio::task::spawn_blocking(move || service_script("stop", service)).await??;
            tokio::time::sleep(outage).await;
            // Started here (ensure-services waits until it answers), not by the guard.
            std::mem::forget(guard);
            let started =
                tokio::task::spawn_blocking(move || service_script("start", service)).await?;
            if let Err(e) = started {
                // One more try by the guard's path before giving up.
                drop(Restore(Some(service)));
                return Err(e);
            }
        }
    }
    Ok(Window {
        fault,
        down_us,
        up_us: now(),
    })
}
