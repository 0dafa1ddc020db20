//! Ambiguous same-second ties, settled by Stripe's own copy of the object
//! (docs/billing-state.md, "Ambiguous ties").
//!
//! A snapshot is *ambiguous* when the stored one has the same `event.created` second and
//! the same lifecycle rank, came from another event (not from a refetch), and the two
//! would store different rows. Only then does the order of the two events matter and the
//! event id would decide arbitrarily. With a Stripe client configured, the handler stops
//! ([`Handled::Refetch`]); `process::apply` rolls the transaction back (no row lock and no
//! connection is held during the HTTP call), refetches the object, and runs the event again
//! with it ([`Refetch::Fetched`]). If the tie is still there, the fetched object is stored
//! in place of the event's, with the tie's key and `snapshot_refetched_at` set.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use tollgate_events::EventEnvelope;
use tollgate_stripe::{Fetched, ObjectKind};

use crate::ledger::Applied;

/// What a handler may do about an ambiguous tie in this run of the event.
#[derive(Debug, Clone, Copy)]
pub enum Refetch<'a> {
    /// No Stripe client: never look (billing behaves exactly as without the feature).
    Off,
    /// First run: on an ambiguous tie, stop and ask for the object.
    Ask,
    /// Second run: the object as Stripe returned it, or `None` when the refetch fell back
    /// (the event id decides, as without a client).
    Fetched(Option<&'a Fetched>),
}

/// A handler's result: applied, or stopped to have an object refetched first.
#[derive(Debug)]
pub enum Handled {
    Applied(Applied),
    Refetch(Ambiguity),
}

impl From<Applied> for Handled {
    fn from(applied: Applied) -> Self {
        Self::Applied(applied)
    }
}

/// An object whose stored snapshot ties ambiguously with an incoming one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ambiguity {
    pub kind: ObjectKind,
    pub id: String,
    /// The `event.created` second of the tie.
    pub second: i64,
}

impl Ambiguity {
    /// Stripe's answer settles the second only if it was asked for after that second was
    /// over: one more second covers clock skew between Stripe and us.
    pub fn not_before(&self) -> SystemTime {
        let settled = u64::try_from(self.second.saturating_add(2)).unwrap_or(0);
        UNIX_EPOCH + Duration::from_secs(settled)
    }
}

/// The ordering key of a snapshot: (created, rank, event id), and whether it was refetched.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SnapshotKey {
    pub snapshot_created: i64,
    pub snapshot_rank: i32,
    pub snapshot_event_id: String,
    pub snapshot_refetched_at: Option<DateTime<Utc>>,
}

impl SnapshotKey {
    /// The key of the snapshot an event carries.
    pub fn of_event(envelope: &EventEnvelope, rank: i32) -> Self {
        Self {
            snapshot_created: envelope.created,
            snapshot_rank: rank,
            snapshot_event_id: envelope.id.clone(),
            snapshot_refetched_at: None,
        }
    }

    /// Whether `incoming` (from an event) ties ambiguously with this stored key.
    /// `same_row`: the two snapshots would store the same row (then order does not matter).
    pub fn ambiguous_with(&self, incoming: &SnapshotKey, same_row: bool) -> bool {
        self.snapshot_refetched_at.is_none()
            && self.snapshot_created == incoming.snapshot_created
            && self.snapshot_rank == incoming.snapshot_rank
            && self.snapshot_event_id != incoming.snapshot_event_id
            && !same_row
    }

    /// The key a refetched snapshot settling the tie between `self` (stored) and
    /// `incoming` is stored with: the tie's (created, rank), the greater event id (so the
    /// deterministic order still holds among everything seen), and when it was asked for.
    fn settled_by(&self, incoming: &SnapshotKey, fetched: &Fetched) -> Self {
        Self {
            snapshot_created: incoming.snapshot_created,
            snapshot_rank: incoming.snapshot_rank,
            snapshot_event_id: self
                .snapshot_event_id
                .clone()
                .max(incoming.snapshot_event_id.clone()),
            snapshot_refetched_at: Some(DateTime::<Utc>::from(fetched.requested_at)),
        }
    }
}

/// What to write for an incoming snapshot.
pub enum Settled<R> {
    /// This row with this key, through the usual gate.
    Write(R, SnapshotKey),
    /// Nothing yet: refetch the object and run the event again.
    Refetch(Ambiguity),
}

/// The stored snapshot an incoming one is compared with.
pub struct Stored<'a> {
    pub key: &'a SnapshotKey,
    /// Whether the incoming snapshot would store the same row (then order does not matter).
    pub same_row: bool,
}

/// Decides between the event's own row and Stripe's copy of the object.
///
/// `decode` turns a fetched object into a row with the same decoder as a webhook's
/// `data.object`; it fails if the object cannot be decoded or is not the one the event
/// is about (then the event's row is written, as on any failed refetch).
pub fn settle<R>(
    refetch: Refetch<'_>,
    (kind, id): (ObjectKind, &str),
    stored: Option<Stored<'_>>,
    row: R,
    key: SnapshotKey,
    decode: impl FnOnce(&serde_json::Value) -> Result<R, String>,
) -> Settled<R> {
    let Some(stored) = stored else {
        return Settled::Write(row, key);
    };
    if matches!(refetch, Refetch::Off) || !stored.key.ambiguous_with(&key, stored.same_row) {
        return Settled::Write(row, key);
    }
    let resolution = match refetch {
        Refetch::Off => unreachable!("returned above"),
        Refetch::Ask => {
            return Settled::Refetch(Ambiguity {
                kind,
                id: id.to_string(),
                second: key.snapshot_created,
            });
        }
        Refetch::Fetched(None) => "event_id",
        Refetch::Fetched(Some(fetched)) => match decode(&fetched.object) {
            Ok(fetched_row) => {
                count_tie(kind, "refetched");
                let key = stored.key.settled_by(&key, fetched);
                return Settled::Write(fetched_row, key);
            }
            Err(reason) => {
                tracing::warn!(
                    object = kind.as_str(),
                    id,
                    reason,
                    "refetched object unusable; the event id decides the tie"
                );
                "event_id"
            }
        },
    };
    count_tie(kind, resolution);
    Settled::Write(row, key)
}

/// `tollgate_billing_ambiguous_ties_total{object, resolution}`: how each ambiguous tie
/// seen with a Stripe client was settled (`refetched`, or `event_id` after a fallback).
fn count_tie(kind: ObjectKind, resolution: &'static str) {
    metrics::counter!(
        "tollgate_billing_ambiguous_ties_total",
        "object" => kind.as_str(),
        "resolution" => resolution
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(created: i64, rank: i32, event_id: &str) -> SnapshotKey {
        SnapshotKey {
            snapshot_created: created,
            snapshot_rank: rank,
            snapshot_event_id: event_id.into(),
            snapshot_refetched_at: None,
        }
    }

    #[test]
    fn only_a_same_second_same_rank_disagreement_between_two_events_is_ambiguous() {
        let stored = key(100, 10, "evt_a");
        assert!(stored.ambiguous_with(&key(100, 10, "evt_b"), false));
        assert!(
            !stored.ambiguous_with(&key(100, 10, "evt_b"), true),
            "same row"
        );
        assert!(
            !stored.ambiguous_with(&key(100, 10, "evt_a"), false),
            "same event"
        );
        assert!(!stored.ambiguous_with(&key(101, 10, "evt_b"), false));
        assert!(!stored.ambiguous_with(&key(100, 14, "evt_b"), false));
        let refetched = SnapshotKey {
            snapshot_refetched_at: Some(Utc::now()),
            ..stored
        };
        assert!(
            !refetched.ambiguous_with(&key(100, 10, "evt_b"), false),
            "a refetched snapshot settled its second"
        );
    }

    #[test]
    fn a_refetched_snapshot_keeps_the_tie_key_and_the_greater_event_id() {
        let fetched = Fetched {
            object: serde_json::json!({}),
            requested_at: UNIX_EPOCH + Duration::from_secs(200),
        };
        let settled = key(100, 10, "evt_b").settled_by(&key(100, 10, "evt_a"), &fetched);
        assert_eq!(
            (
                settled.snapshot_created,
                settled.snapshot_rank,
                settled.snapshot_event_id.as_str()
            ),
            (100, 10, "evt_b")
        );
        assert_eq!(settled.snapshot_refetched_at.unwrap().timestamp(), 200);
    }

    #[test]
    fn the_refetch_waits_for_the_second_to_be_over() {
        let ambiguity = Ambiguity {
            kind: ObjectKind::Subscription,
            id: "sub_1".into(),
            second: 1_000,
        };
        assert_eq!(
            ambiguity.not_before(),
            UNIX_EPOCH + Duration::from_secs(1_002)
        );
    }
}
