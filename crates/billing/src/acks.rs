//! Settling deliveries in bulk. Batches finish out of order (several run at
//! once), so one `basic.ack` with `multiple` covers the longest run of finished
//! deliveries from the oldest unsettled one: one frame, and one settlement in the
//! quorum queue, for many messages. A finished delivery stuck behind a slow one
//! is acked on its own after `STRAGGLER_AGE`, so a slow batch never holds the
//! prefetch window of the others for long.
//!
//! One task per channel sends every ack and nack, in the order it decides them:
//! a `multiple` ack must never reach the broker before a nack it would cover, nor
//! after an ack of a tag it covers (an unknown delivery tag closes the channel).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tollgate_broker::lapin::Channel;
use tollgate_broker::lapin::options::{BasicAckOptions, BasicNackOptions};
use tracing::warn;

/// How long a finished delivery may wait behind an unfinished older one.
const STRAGGLER_AGE: Duration = Duration::from_millis(20);

enum Command {
    /// Delivered: track it (sent in delivery order, before its outcome).
    Track(u64),
    /// Applied (or retried / dead-lettered elsewhere): acknowledge.
    Ack(Vec<u64>),
    /// Not handled (could not be retried): return it to the queue now.
    Requeue(u64),
}

/// Where a consumer's workers report what became of each delivery.
#[derive(Clone)]
pub struct Acks {
    commands: mpsc::UnboundedSender<Command>,
}

impl Acks {
    /// Starts the task that settles deliveries of `channel`; it ends when every
    /// `Acks` handle is dropped, after settling what it was told: await it before
    /// closing the channel.
    pub fn start(channel: Channel) -> (Self, JoinHandle<()>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = tokio::spawn(settle_loop(channel, receiver));
        (Self { commands }, task)
    }

    pub fn track(&self, delivery_tag: u64) {
        let _ = self.commands.send(Command::Track(delivery_tag));
    }

    pub fn ack(&self, delivery_tags: Vec<u64>) {
        let _ = self.commands.send(Command::Ack(delivery_tags));
    }

    pub fn requeue(&self, delivery_tag: u64) {
        let _ = self.commands.send(Command::Requeue(delivery_tag));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    /// Finished at this instant, not acknowledged yet.
    Finished(Instant),
}

/// The unsettled deliveries of one channel, by tag, and what to send for them.
#[derive(Default)]
struct Ledger {
    unsettled: BTreeMap<u64, State>,
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    AckUpTo(u64),
    AckOne(u64),
}

impl Ledger {
    fn track(&mut self, tag: u64) {
        self.unsettled.insert(tag, State::Pending);
    }

    fn finish(&mut self, tag: u64, at: Instant) {
        if let Some(state) = self.unsettled.get_mut(&tag) {
            *state = State::Finished(at);
        }
    }

    /// Forgets a delivery settled by a frame of its own (a nack).
    fn forget(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// The frames that settle what can be settled now: one `multiple` ack for the
    /// finished run at the front, single acks for stragglers older than `max_age`.
    fn frames(&mut self, now: Instant, max_age: Duration) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut up_to = None;
        while let Some(entry) = self.unsettled.first_entry() {
            if *entry.get() == State::Pending {
                break;
            }
            up_to = Some(entry.remove_entry().0);
        }
        if let Some(tag) = up_to {
            frames.push(Frame::AckUpTo(tag));
        }
        let stragglers: Vec<u64> = self
            .unsettled
            .iter()
            .filter_map(|(tag, state)| match state {
                State::Finished(at) if now.duration_since(*at) >= max_age => Some(*tag),
                _ => None,
            })
            .collect();
        for tag in stragglers {
            self.unsettled.remove(&tag);
            frames.push(Frame::AckOne(tag));
        }
        frames
    }

    /// When the oldest finished straggler comes of age, if there is one.
    fn next_deadline(&self, max_age: Duration) -> Option<Instant> {
        self.unsettled
            .values()
            .filter_map(|state| match state {
                State::Finished(at) => Some(*at + max_age),
                State::Pending => None,
            })
            .min()
    }
}

async fn settle_loop(channel: Channel, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut ledger = Ledger::default();
    loop {
        let command = match ledger.next_deadline(STRAGGLER_AGE) {
            Some(deadline) => {
                tokio::select! {
                    command = commands.recv() => command,
                    () = tokio::time::sleep_until(deadline.into()) => {
                        send(&channel, ledger.frames(Instant::now(), STRAGGLER_AGE)).await;
                        continue;
                    }
                }
            }
            None => commands.recv().await,
        };
        let Some(command) = command else {
            // Every handle is gone; what is still pending is redelivered after the
            // channel closes.
            send(&channel, ledger.frames(Instant::now(), STRAGGLER_AGE)).await;
            return;
        };
        apply(&channel, &mut ledger, command).await;
        // Take everything already queued before deciding: fewer, larger acks.
        while let Ok(command) = commands.try_recv() {
            apply(&channel, &mut ledger, command).await;
        }
        send(&channel, ledger.frames(Instant::now(), STRAGGLER_AGE)).await;
    }
}

async fn apply(channel: &Channel, ledger: &mut Ledger, command: Command) {
    match command {
        Command::Track(tag) => ledger.track(tag),
        Command::Ack(tags) => {
            let now = Instant::now();
            for tag in tags {
                ledger.finish(tag, now);
            }
        }
        Command::Requeue(tag) => {
            ledger.forget(tag);
            let options = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(e) = channel.basic_nack(tag, options).await {
                warn!(error = %e, "could not requeue the delivery");
            }
        }
    }
}

async fn send(channel: &Channel, frames: Vec<Frame>) {
    for frame in frames {
        let (tag, multiple) = match frame {
            Frame::AckUpTo(tag) => (tag, true),
            Frame::AckOne(tag) => (tag, false),
        };
        if let Err(e) = channel.basic_ack(tag, BasicAckOptions { multiple }).await {
            // The channel is gone: the broker redelivers, the ledger absorbs it.
            warn!(error = %e, "could not acknowledge deliveries");
            return;
        }
        metrics::counter!("tollgate_billing_ack_frames_total").increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_from_the_oldest_is_acked_with_one_frame() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        (1..=6).for_each(|tag| ledger.track(tag));
        [3, 1, 2]
            .into_iter()
            .for_each(|tag| ledger.finish(tag, now));
        ledger.finish(5, now);
        assert_eq!(ledger.frames(now, STRAGGLER_AGE), vec![Frame::AckUpTo(3)]);
        // 5 waits behind 4 until it is a straggler.
        assert_eq!(ledger.frames(now, STRAGGLER_AGE), vec![]);
        assert_eq!(
            ledger.next_deadline(STRAGGLER_AGE),
            Some(now + STRAGGLER_AGE)
        );
        let later = now + STRAGGLER_AGE;
        assert_eq!(ledger.frames(later, STRAGGLER_AGE), vec![Frame::AckOne(5)]);
        // A multiple ack past 5 is harmless: 5 is no longer outstanding.
        ledger.finish(4, later);
        ledger.finish(6, later);
        assert_eq!(ledger.frames(later, STRAGGLER_AGE), vec![Frame::AckUpTo(6)]);
        assert!(ledger.unsettled.is_empty());
    }

    #[test]
    fn a_requeued_delivery_is_never_covered_by_a_later_multiple_ack() {
        let mut ledger = Ledger::default();
        let now = Instant::now();
        (1..=3).for_each(|tag| ledger.track(tag));
        ledger.forget(2);
        ledger.finish(3, now);
        assert_eq!(ledger.frames(now, STRAGGLER_AGE), vec![]);
        ledger.finish(1, now);
        // 2 was nacked before this frame is sent, so the broker no longer holds it.
        assert_eq!(ledger.frames(now, STRAGGLER_AGE), vec![Frame::AckUpTo(3)]);
    }
}
