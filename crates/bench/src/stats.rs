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
