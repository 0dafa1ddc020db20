//! The in-process cache of customer entitlement state, keyed by customer id, with
//! an index from subjects (user id, email) to customers. Filled from PostgreSQL on
//! a miss and kept current by the change feed (`feed`): a change is applied only
//! if its per-customer version is newer than what is held, so a late load or a
//! duplicate can never roll a customer back.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use uuid::Uuid;

use crate::model::{Cached, ChangeMessage, CustomerState, Subject};

const SHARDS: usize = 32;

/// A hash map split into independently locked shards, so concurrent readers and
/// the feed writer rarely meet on one lock.
struct Sharded<K, V> {
    hasher: RandomState,
    shards: Vec<RwLock<HashMap<K, V>>>,
}

impl<K: Hash + Eq, V: Clone> Sharded<K, V> {
    fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).read().get(key).cloned()
    }

    fn update<R>(&self, key: K, f: impl FnOnce(Option<&V>) -> (Option<V>, R)) -> R {
        let mut shard = self.shard(&key).write();
        let (new, result) = f(shard.get(&key));
        if let Some(new) = new {
            shard.insert(key, new);
        }
        result
    }

    fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).write().remove(key);
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }

    fn keys(&self) -> Vec<K>
    where
        K: Clone,
    {
        self.shards
            .iter()
            .flat_map(|s| s.read().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard.write().clear();
        }
    }
}

#[derive(Clone)]
enum SubjectEntry {
    Known(Arc<[Uuid]>),
    /// No customer had this subject when last looked up.
    Unknown(Instant),
}

/// What the cache holds for a subject.
pub enum Lookup {
    /// The subject's customers (usually one). `reread`: one of them is in the last
    /// tenth of its max age and nobody is reading it again yet; the caller should read
    /// the subject again in the background while answering from these. True for one
    /// lookup only, so a customer who keeps being asked about is answered from memory
    /// instead of waiting on PostgreSQL when its max age passes; one nobody asks about
    /// expires as before, and so does one whose background read failed.
    Hit {
        found: Vec<Arc<Cached>>,
        reread: bool,
    },
    /// Recently looked up and not a customer.
    Unknown,
    Miss,
}

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A newer state replaced the held one.
    Updated,
    /// The customer was not cached: now it is, from the message (which has no email,
    /// so a reload should fill in the email index).
    Inserted,
    /// The held state is as new or newer.
    Stale,
}

pub struct Cache {
    customers: Sharded<Uuid, Arc<Cached>>,
    subjects: Sharded<String, SubjectEntry>,
    negative_ttl: Duration,
    max_age: Duration,
}

impl Cache {
    pub fn new(negative_ttl: Duration, max_age: Duration) -> Self {
        Self {
            customers: Sharded::new(),
            subjects: Sharded::new(),
            negative_ttl,
            max_age,
        }
    }

    pub fn lookup(&self, subject: &Subject) -> Lookup {
        match self.subjects.get(subject.key().as_str()) {
            None => Lookup::Miss,
            Some(SubjectEntry::Unknown(at)) => {
                if at.elapsed() < self.negative_ttl {
                    Lookup::Unknown
                } else {
                    Lookup::Miss
                }
            }
            Some(SubjectEntry::Known(ids)) => {
                let now = Instant::now();
                let reread_from = now + self.max_age / 10;
                let (mut found, mut reread) = (Vec::with_capacity(ids.len()), false);
                for id in ids.iter() {
                    match self.customers.get(id) {
                        Some(cached) if now < cached.stale_at => {
                            // Claims every due customer of the subject: one read covers them.
                            reread |= reread_from >= cached.stale_at
                                && !cached.rereading.swap(true, Ordering::AcqRel);
                            found.push(cached);
                        }
                        _ => return Lookup::Miss,
                    }
                }
                Lookup::Hit { found, reread }
            }
        }
    }

    /// How long `id`'s state is served before it is re-read: `max_age` less up to a
    /// fifth of it, fixed per customer and process. Customers loaded together (a
    /// replica warming up) would otherwise all expire together, and every Check in
    /// that moment would wait on PostgreSQL. Worked out once, when a state is cached.
    fn max_age_of(&self, id: &Uuid) -> Duration {
        let spread_ms = (self.max_age.as_millis() / 5).max(1) as u64;
        self.max_age - Duration::from_millis(self.customers.hasher.hash_one(id) % spread_ms)
    }

    fn cached(&self, state: CustomerState, stale_at: Instant) -> Arc<Cached> {
        Arc::new(Cached {
            state,
            stale_at,
            rereading: AtomicBool::new(false),
        })
    }

    /// The held state of one customer.
    pub fn customer(&self, id: &Uuid) -> Option<Arc<Cached>> {
        self.customers.get(id)
    }

    /// Stores what a PostgreSQL lookup of `subject` found; returns what is now
    /// held for those customers (a newer state from the feed wins).
    pub fn insert_loaded(&self, subject: &Subject, states: Vec<CustomerState>) -> Vec<Arc<Cached>> {
        if states.is_empty() {
            self.subjects.update(subject.key(), |_| {
                (Some(SubjectEntry::Unknown(Instant::now())), ())
            });
            return Vec::new();
        }
        let ids: Arc<[Uuid]> = states.iter().map(|s| s.customer_id).collect();
        let held: Vec<Arc<Cached>> = states.into_iter().map(|s| self.store(s, true)).collect();
        self.subjects
            .update(subject.key(), |_| (Some(SubjectEntry::Known(ids)), ()));
        held
    }

    /// Stores a state read by customer id (after a change for an uncached
    /// customer, or a resync), and indexes its user id and email.
    pub fn insert_by_id(&self, state: CustomerState) {
        let id = state.customer_id;
        let email = state.email.clone();
        let held = self.store(state, true);
        if let Some(user_id) = &held.state.user_id {
            self.index_user(user_id, id);
        }
        if let Some(email) = email {
            // Add to a known list of this email's customers; forget a negative answer.
            self.subjects
                .update(format!("e:{email}"), |entry| match entry {
                    Some(SubjectEntry::Known(ids)) if !ids.contains(&id) => {
                        let mut ids = ids.to_vec();
                        ids.push(id);
                        (Some(SubjectEntry::Known(ids.into())), ())
                    }
                    Some(SubjectEntry::Unknown(_)) => {
                        (Some(SubjectEntry::Known(Arc::from([id]))), ())
                    }
                    _ => (None, ()),
                });
        }
    }

    /// Applies a change from the feed (or the outbox).
    pub fn apply(&self, change: &ChangeMessage) -> Applied {
        let stale_at = Instant::now() + self.max_age_of(&change.customer_id);
        let outcome = self
            .customers
            .update(change.customer_id, |held| match held {
                Some(held) if held.state.customer_version >= change.customer_version => {
                    (None, Applied::Stale)
                }
                Some(held) => (
                    Some(self.cached(change.to_state(Some(&held.state)), held.stale_at)),
                    Applied::Updated,
                ),
                None => (
                    Some(self.cached(change.to_state(None), stale_at)),
                    Applied::Inserted,
                ),
            });
        if outcome != Applied::Stale
            && let Some(user_id) = &change.user_id
        {
            self.index_user(user_id, change.customer_id);
        }
        outcome
    }

    fn index_user(&self, user_id: &str, id: Uuid) {
        self.subjects
            .update(format!("u:{user_id}"), |entry| match entry {
                Some(SubjectEntry::Known(ids)) if ids.len() == 1 && ids[0] == id => (None, ()),
                _ => (Some(SubjectEntry::Known(Arc::from([id]))), ()),
            });
    }

    /// Keeps the newer of the held and the given state.
    fn store(&self, state: CustomerState, fresh_load: bool) -> Arc<Cached> {
        let id = state.customer_id;
        let stale_at = Instant::now() + self.max_age_of(&id);
        self.customers.update(id, move |held| match held {
            Some(held) if held.state.customer_version > state.customer_version => {
                (None, held.clone())
            }
            Some(held) if held.state.customer_version == state.customer_version && !fresh_load => {
                (None, held.clone())
            }
            _ => {
                let cached = self.cached(state, stale_at);
                (Some(cached.clone()), cached)
            }
        })
    }

    pub fn forget_subject(&self, subject: &Subject) {
        self.subjects.remove(subject.key().as_str());
    }

    pub fn customer_ids(&self) -> Vec<Uuid> {
        self.customers.keys()
    }

    pub fn len(&self) -> usize {
        self.customers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (a resync that cannot be done incrementally).
    pub fn clear(&self) {
        self.customers.clear();
        self.subjects.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: i64, status: &str) -> CustomerState {
        CustomerState {
            customer_id: Uuid::from_u128(7),
            customer_version: version,
            user_id: Some("u7".into()),
            email: Some("u7@example.com".into()),
            access_status: status.into(),
            tier: Some("pro".into()),
            stripe_features: vec![],
            test_user: false,
            test_user_until: None,
            deleted: false,
        }
    }

    fn change(version: i64, status: &str) -> ChangeMessage {
        ChangeMessage {
            version: 100 + version,
            customer_id: Uuid::from_u128(7),
            customer_version: version,
            user_id: Some("u7".into()),
            stripe_customer_id: Some("cus_7".into()),
            access_status: status.into(),
            tier: Some("free".into()),
            stripe_features: vec![],
            test_user: false,
            deleted: false,
            reason: "access".into(),
        }
    }

    fn status(cache: &Cache, subject: &Subject) -> String {
        match cache.lookup(subject) {
            Lookup::Hit { found, .. } => found[0].state.access_status.clone(),
            Lookup::Unknown => "unknown".into(),
            Lookup::Miss => "miss".into(),
        }
    }

    #[test]
    fn newer_versions_win_whatever_the_order() {
        let cache = Cache::new(Duration::from_secs(5), Duration::from_secs(300));
        let by_email = Subject::Email("u7@example.com".into());
        let by_id = Subject::UserId("u7".into());
        assert_eq!(status(&cache, &by_email), "miss");
        cache.insert_loaded(&by_email, vec![state(1, "active")]);
        assert_eq!(status(&cache, &by_email), "active");
        assert_eq!(status(&cache, &by_id), "miss", "not indexed by user id yet");
        assert_eq!(cache.apply(&change(2, "payment_failed")), Applied::Updated);
        assert_eq!(status(&cache, &by_email), "payment_failed", "email kept");
        assert_eq!(status(&cache, &by_id), "payment_failed");
        // A load that started before the change finishes after it: ignored.
        cache.insert_loaded(&by_email, vec![state(1, "active")]);
        assert_eq!(status(&cache, &by_email), "payment_failed");
        assert_eq!(cache.apply(&change(2, "payment_failed")), Applied::Stale);
        assert_eq!(cache.apply(&change(1, "active")), Applied::Stale);
    }

    #[test]
    fn customers_loaded_together_expire_spread_over_the_last_fifth_of_the_max_age() {
        let cache = Cache::new(Duration::from_secs(2), Duration::from_secs(100));
        let ages: Vec<Duration> = (0..200)
            .map(|_| cache.max_age_of(&Uuid::new_v4()))
            .collect();
        assert!(
            ages.iter()
                .all(|a| *a > Duration::from_secs(80) && *a <= Duration::from_secs(100)),
            "{ages:?}"
        );
        let spread = *ages.iter().max().unwrap() - *ages.iter().min().unwrap();
        assert!(spread > Duration::from_secs(10), "all within {spread:?}");
        let id = Uuid::new_v4();
        assert_eq!(cache.max_age_of(&id), cache.max_age_of(&id));
    }

    #[test]
    fn a_cached_customer_is_read_again_once_its_max_age_has_passed() {
        let cache = Cache::new(Duration::from_secs(2), Duration::from_millis(100));
        let subject = Subject::UserId("u7".into());
        cache.insert_loaded(&subject, vec![state(1, "active")]);
        assert_eq!(status(&cache, &subject), "active");
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(status(&cache, &subject), "miss");
    }

    #[test]
    fn a_customer_found_in_the_last_tenth_of_its_max_age_is_read_again_once() {
        let cache = Cache::new(Duration::from_secs(2), Duration::from_secs(2));
        let subject = Subject::UserId("u8".into());
        let reread = |cache: &Cache| match cache.lookup(&subject) {
            Lookup::Hit { reread, .. } => reread,
            _ => panic!("not a hit"),
        };
        let held = cache.insert_loaded(&subject, vec![state(1, "active")]);
        assert!(!reread(&cache), "re-read before its last tenth");
        // 50 ms into its last 200 ms: a lookup finds it due, once.
        let due = held[0].stale_at - Duration::from_millis(150);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert!(reread(&cache), "not re-read in its last tenth");
        assert!(!reread(&cache), "re-read twice");
        // What the background read brings is a new state with a new life.
        let fresh = cache.insert_loaded(&subject, vec![state(1, "active")]);
        assert!(fresh[0].stale_at > held[0].stale_at);
        assert!(!reread(&cache), "the new state is due at once");
    }

    #[test]
    fn unknown_subjects_are_remembered_briefly_and_forgotten_when_they_appear() {
        let cache = Cache::new(Duration::from_millis(50), Duration::from_secs(300));
        let subject = Subject::UserId("u7".into());
        cache.insert_loaded(&subject, vec![]);
        assert_eq!(status(&cache, &subject), "unknown");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(status(&cache, &subject), "miss");
        cache.insert_loaded(&subject, vec![]);
        assert_eq!(cache.apply(&change(1, "active")), Applied::Inserted);
        assert_eq!(status(&cache, &subject), "active");
        let email = Subject::Email("u7@example.com".into());
        cache.insert_loaded(&email, vec![]);
        cache.insert_by_id(state(1, "active"));
        assert_eq!(status(&cache, &email), "active");
    }
}
