//! Waking a background task when a row it should handle commits: LISTEN on a
//! channel the writer NOTIFYs inside its transaction (delivered at commit, only
//! then), with a poll as well, so a lost notification or a dropped listening
//! connection only delays the work.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tracing::warn;

pub struct Wakeup {
    pool: PgPool,
    channel: &'static str,
    /// Named in warnings.
    task: &'static str,
    listener: Option<PgListener>,
}

impl Wakeup {
    pub fn new(pool: PgPool, channel: &'static str, task: &'static str) -> Self {
        Self {
            pool,
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
