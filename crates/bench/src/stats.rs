use std::time::Duration;

/// Throughput and latency of one timed phase.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
    /// For a paced phase: the longest the load generator's own timer thread was kept
    /// from running (asked to sleep `PACER_TICK`).
    pub pacer_stall: Duration,
    /// For a paced phase: calls that came due while the load generator's own timer
    /// thread was not running and were skipped rather than sent in one burst.
    pub skipped: u64,
}

impl Phase {
    /// Of the calls a paced phase meant to send, the share it sent.
    pub fn sent_share(&self) -> f64 {
        let meant = self.ok + self.errors + self.skipped;
        if meant == 0 {
            return 1.0;
        }
        (self.ok + self.errors) as f64 / meant as f64
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.latencies_us.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * p).round() as usize;
        f64::from(sorted[index]) / 1000.0
    }

    pub fn merge(phases: &[Phase]) -> Phase {
        Phase {
            ok: phases.iter().map(|p| p.ok).sum(),
            errors: phases.iter().map(|p| p.errors).sum(),
            elapsed: phases.iter().map(|p| p.elapsed).sum(),
            latencies_us: phases
                .iter()
                .flat_map(|p| p.latencies_us.iter().copied())
                .collect(),
            pacer_stall: phases
                .iter()
                .map(|p| p.pacer_stall)
                .max()
                .unwrap_or_default(),
            skipped: phases.iter().map(|p| p.skipped).sum(),
        }
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// How late a thread woke from short sleeps on this machine: the floor under any
/// latency a benchmark here can measure. On a VM whose host is slow to resume an
/// idle vCPU, a sleeping thread wakes milliseconds late now and then, whatever the
/// program; on dedicated cores, tens of microseconds.
#[derive(Debug, Clone, Copy)]
pub struct WakeLateness {
    pub tick: Duration,
    pub wakes: u64,
    /// Wakes more than 1 ms after they were due, per second of the probe.
    pub late_over_1ms_per_second: f64,
    pub p99: Duration,
    pub max: Duration,
}

/// Sleeps `tick` again and again for `span` on a thread of its own and measures
/// how much later than asked each wake came. Run it on an otherwise idle machine.
pub fn wake_lateness(tick: Duration, span: Duration) -> WakeLateness {
    let started = std::time::Instant::now();
    let mut lateness = Vec::new();
    while started.elapsed() < span {
        let asleep = std::time::Instant::now();
        std::thread::sleep(tick);
        lateness.push(asleep.elapsed().saturating_sub(tick));
    }
    lateness.sort_unstable();
    let late = lateness
        .iter()
        .filter(|l| **l > Duration::from_millis(1))
        .count();
    WakeLateness {
        tick,
        wakes: lateness.len() as u64,
        late_over_1ms_per_second: late as f64 / span.as_secs_f64(),
        p99: lateness[(lateness.len() - 1) * 99 / 100],
        max: *lateness.last().expect("at least one wake"),
    }
}

impl std::fmt::Display for WakeLateness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an idle thread asked to sleep {} µs woke more than 1 ms late {:.1} times a second (p99 {:.2} ms late, max {:.2} ms; {} wakes)",
            self.tick.as_micros(),
            self.late_over_1ms_per_second,
            self.p99.as_secs_f64() * 1e3,
            self.max.as_secs_f64() * 1e3,
            self.wakes
        )
    }
}
