//! Waking a background task when a row it should handle commits.
//!
//! A row written by this process wakes the task in this process directly, after
//! the commit ([`Tx`](crate::db::Tx) announces it). A NOTIFY in the writing
//! transaction would do the same across processes, but PostgreSQL serialises the
//! commits of every transaction that notifies (it holds a database-wide lock
//! through the commit's WAL flush), which costs billing its group commit. So
//! NOTIFY is kept for writers with no such task in their process (the `tollgate`
//! command line): tasks also LISTEN, and poll as well, so a lost notification or a
//! dropped listening connection only delays the work.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::warn;

/// Per channel, a counter of this process's commits: a task that watches it never
/// misses one made while it was busy.
static LOCAL_COMMITS: LazyLock<Mutex<HashMap<&'static str, watch::Sender<u64>>>> =
    LazyLock::new(Mutex::default);

fn local_commits(channel: &'static str) -> watch::Sender<u64> {
    LOCAL_COMMITS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(channel)
        .or_insert_with(|| watch::Sender::new(0))
        .clone()
}

/// Whether a task in this process waits on `channel` (then a writer wakes it after
/// its commit instead of notifying).
pub fn has_local_task(channel: &'static str) -> bool {
    local_commits(channel).receiver_count() > 0
}

/// Wakes this process's tasks on `channel`: call after the commit.
pub fn committed(channel: &'static str) {
    local_commits(channel).send_modify(|n| *n = n.wrapping_add(1));
}

pub struct Wakeup {
    pool: PgPool,
    local: watch::Receiver<u64>,
    channel: &'static str,
    /// Named in warnings.
    task: &'static str,
    listener: Option<PgListener>,
}

impl Wakeup {
    pub fn new(pool: PgPool, channel: &'static str, task: &'static str) -> Self {
        Self {
            pool,
            local: local_commits(channel).subscribe(),
            channel,
            task,
            listener: None,
        }
    }

    /// (Re)connects the listener if needed. Call before looking for work, so a
    /// row committed while working still wakes the next `wait`.
    pub async fn listen(&mut self) {
        if self.listener.is_some() {
            return;
        }
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(self.channel).await {
                Ok(()) => self.listener = Some(listener),
                Err(e) => warn!(error = %e, task = self.task, "cannot LISTEN; polling"),
            },
            Err(e) => warn!(error = %e, task = self.task, "cannot connect to LISTEN; polling"),
        }
    }

    /// Waits for a notification, `poll`, or `stop`; true when stopping.
    pub async fn wait(&mut self, poll: Duration, stop: &mut watch::Receiver<bool>) -> bool {
        let notified = async {
            match self.listener.as_mut() {
                Some(listener) => listener.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.local.changed() => false,
            result = notified => {
                if result.is_err() {
                    self.listener = None;
                }
                false
            }
            () = tokio::time::sleep(poll) => false,
            changed = stop.changed() => changed.is_err() || *stop.borrow(),
        }
    }
}
