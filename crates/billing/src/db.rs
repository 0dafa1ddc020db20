use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

/// The schema, from the workspace's migrations/ (billing owns them).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// A pool that connects lazily: billing starts (and retries events) while the
/// database is down instead of refusing to start.
pub fn pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// A billing transaction: the database transaction, and the customer rows it has
/// locked so far (Stripe customer id → our id). A batch locks every customer it
/// touches in one statement; handlers asking for a lock the transaction already
/// holds then need no round trip (`customers::lock_or_create`).
pub struct Tx {
    inner: Transaction<'static, Postgres>,
    locked: HashMap<String, uuid::Uuid>,
    /// Channels whose tasks in this process to wake once this commits.
    wake: Vec<&'static str>,
}

impl Tx {
    pub async fn begin(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            inner: pool.begin().await?,
            locked: HashMap::new(),
            wake: Vec::new(),
        })
    }

    /// Commits, then wakes the tasks that have rows of this transaction to handle.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await?;
        for channel in self.wake {
            crate::wakeup::committed(channel);
        }
        Ok(())
    }

    /// Wakes this process's task on `channel` after the commit, if there is one, and
    /// says so; otherwise the writer must NOTIFY in the transaction (crate::wakeup).
    pub fn wake_locally_after_commit(&mut self, channel: &'static str) -> bool {
        if !crate::wakeup::has_local_task(channel) {
            return false;
        }
        if !self.wake.contains(&channel) {
            self.wake.push(channel);
        }
        true
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }

    /// Our id of a customer this transaction has locked.
    pub fn locked(&self, stripe_customer_id: &str) -> Option<uuid::Uuid> {
        self.locked.get(stripe_customer_id).copied()
    }

    /// Records a customer row lock taken in this transaction (held until it ends).
    pub fn holds_lock(&mut self, stripe_customer_id: &str, customer_id: uuid::Uuid) {
        self.locked
            .insert(stripe_customer_id.to_string(), customer_id);
    }
}

impl Deref for Tx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}
