//! Global versions (billing's outbox ids) as this replica has seen them.
//!
//! Versions are allocated when billing writes an outbox row and become visible
//! when its transaction commits, so they may arrive out of order, and a rolled
//! back transaction leaves a version that never arrives. The tracker keeps:
//! - `high`: the greatest version received;
//! - `missing`: versions below `high` not received yet (looked up in PostgreSQL by
//!   the resolver; declared holes once absent for the gap timeout);
//! - `watermark`: every version up to it was applied or is a hole. Watch streams
//!   changes in watermark order, so a resume from a version misses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::ChangeMessage;

/// Jumps larger than this are not tracked id by id (never expected: versions are
/// consecutive except for rolled-back transactions).
const MAX_TRACKED_GAP: i64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// First sight of this version: apply it.
    New,
    /// Below the watermark (a very late commit, or seen before): apply to the
    /// cache (harmless, versions per customer decide) but do not stream it again.
    Late,
    /// Already received and not yet streamed.
    Duplicate,
}

#[derive(Debug, Default)]
pub struct Tracker {
    high: i64,
    watermark: i64,
    missing: BTreeMap<i64, Instant>,
    holes: BTreeSet<i64>,
    pending: BTreeMap<i64, Arc<ChangeMessage>>,
}

impl Tracker {
    pub fn starting_at(version: i64) -> Self {
        Self {
            high: version,
            watermark: version,
            ..Self::default()
        }
    }

    pub fn high(&self) -> i64 {
        self.high
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    pub fn receive(&mut self, change: Arc<ChangeMessage>) -> Received {
        let version = change.version;
        if version <= self.watermark {
            return Received::Late;
        }
        if version > self.high {
            let gap = version - self.high - 1;
            if gap > MAX_TRACKED_GAP {
                tracing::warn!(
                    from = self.high,
                    to = version,
                    "version jump too large to track; treated as holes"
                );
                self.holes.extend(self.high + 1..version);
            } else {
                let now = Instant::now();
                for missing in self.high + 1..version {
                    self.missing.insert(missing, now);
                }
            }
            self.high = version;
        } else if self.missing.remove(&version).is_none() {
            return Received::Duplicate;
        }
        self.pending.insert(version, change);
        Received::New
    }

    /// Changes now in order, to stream; advances the watermark.
    pub fn advance(&mut self) -> Vec<Arc<ChangeMessage>> {
        let mut ready = Vec::new();
        while self.watermark < self.high {
            let next = self.watermark + 1;
            if let Some(change) = self.pending.remove(&next) {
                ready.push(change);
            } else if !self.holes.remove(&next) {
                break;
            }
            self.watermark = next;
        }
        ready
    }

    /// Missing versions first noticed at least `age` ago (to look up in PostgreSQL).
    pub fn missing_older_than(&self, age: Duration, limit: usize) -> Vec<i64> {
        self.missing
            .iter()
            .filter(|(_, since)| since.elapsed() >= age)
            .map(|(v, _)| *v)
            .take(limit)
            .collect()
    }

    pub fn missing_up_to(&self, version: i64) -> Vec<i64> {
        self.missing.range(..=version).map(|(v, _)| *v).collect()
    }

    /// Declares versions that PostgreSQL does not have, and that have been
    /// missing for at least `timeout`, as holes (rolled back).
    pub fn expire_holes(&mut self, absent: &[i64], timeout: Duration) -> usize {
        let mut expired = 0;
        for version in absent {
            if self
                .missing
                .get(version)
                .is_some_and(|since| since.elapsed() >= timeout)
            {
                self.missing.remove(version);
                self.holes.insert(*version);
                expired += 1;
            }
        }
        expired
    }

    pub fn missing_count(&self) -> usize {
        self.missing.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(version: i64) -> Arc<ChangeMessage> {
        Arc::new(ChangeMessage {
            version,
            customer_id: uuid::Uuid::nil(),
            customer_version: version,
            user_id: None,
            stripe_customer_id: None,
            access_status: "active".into(),
            tier: None,
            stripe_features: vec![],
            test_user: false,
            deleted: false,
            reason: String::new(),
        })
    }

    fn versions(changes: Vec<Arc<ChangeMessage>>) -> Vec<i64> {
        changes.iter().map(|c| c.version).collect()
    }

    #[test]
    fn out_of_order_versions_stream_in_order() {
        let mut t = Tracker::starting_at(10);
        assert_eq!(t.receive(change(12)), Received::New);
        assert_eq!(versions(t.advance()), Vec::<i64>::new(), "11 is missing");
        assert_eq!(t.missing_up_to(12), vec![11]);
        assert_eq!(t.receive(change(11)), Received::New);
        assert_eq!(
            t.receive(change(11)),
            Received::Duplicate,
            "held until streamed"
        );
        assert_eq!(versions(t.advance()), vec![11, 12]);
        assert_eq!(t.watermark(), 12);
        assert_eq!(t.receive(change(12)), Received::Late);
        assert_eq!(t.receive(change(14)), Received::New);
        assert_eq!(t.receive(change(14)), Received::Duplicate);
    }

    #[test]
    fn holes_are_skipped_only_after_the_timeout() {
        let mut t = Tracker::starting_at(0);
        t.receive(change(3));
        assert_eq!(t.expire_holes(&[1, 2], Duration::from_secs(60)), 0);
        assert!(t.advance().is_empty());
        assert_eq!(t.expire_holes(&[1, 2], Duration::ZERO), 2);
        assert_eq!(versions(t.advance()), vec![3]);
        assert_eq!(t.missing_count(), 0);
    }
}
