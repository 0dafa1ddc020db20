//! Retrieving one object on demand: single-flight per object, bounded by a token bucket.
//!
//! Concurrent refetches of the same object (and the same `after`, see [`Refetcher::refetch`])
//! share one request: the first caller registers a flight and makes the request, the others
//! wait for its result. If that caller is cancelled, a waiting one takes the request over.
//! A flight is forgotten as soon as it has a result, so a later refetch asks Stripe again.
//!
//! A token bucket holding one second's worth of `STRIPE_REFETCH_RATE` bounds the requests
//! of the whole process. An empty bucket does not wait: the caller gets
//! [`Fallback::Throttled`] at once and decides without Stripe.
//!
//! Every call is counted in `tollgate_stripe_refetch_total{object, outcome}` (and in
//! [`Refetcher::count`], per instance, for tests).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;

use crate::client::{ObjectKind, StripeApiError, StripeClient};
use crate::config::StripeConfig;

/// The longest a refetch waits for its `after` moment (a snapshot from the future means
/// clocks disagree; waiting longer would not make the answer more certain).
const MAX_WAIT: Duration = Duration::from_secs(3);

/// An object as Stripe returned it.
#[derive(Debug)]
pub struct Fetched {
    /// Stripe's JSON for the object, unchanged.
    pub object: serde_json::Value,
    /// When the request was sent: the object is Stripe's state at some moment after this.
    pub requested_at: SystemTime,
}

/// Why a refetch gave no object; the caller decides without Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// No `STRIPE_SECRET_KEY`.
    NotConfigured,
    /// The process-wide bucket was empty (`STRIPE_REFETCH_RATE`).
    Throttled,
    /// Stripe answered 429.
    RateLimited,
    /// Stripe answered 404.
    NotFound,
    /// No answer within `STRIPE_TIMEOUT_MS`.
    Timeout,
    /// Any other failure (5xx, connection refused, unreadable answer).
    Failed,
}

/// How one refetch call ended (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This call's own request returned the object.
    Fetched,
    /// This call joined a concurrent request for the same object, which returned it.
    Shared,
    /// No object: see [`Fallback`].
    Fallback(Fallback),
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Fetched,
        Outcome::Shared,
        Outcome::Fallback(Fallback::NotConfigured),
        Outcome::Fallback(Fallback::Throttled),
        Outcome::Fallback(Fallback::RateLimited),
        Outcome::Fallback(Fallback::NotFound),
        Outcome::Fallback(Fallback::Timeout),
        Outcome::Fallback(Fallback::Failed),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fetched => "fetched",
            Self::Shared => "shared",
            Self::Fallback(Fallback::NotConfigured) => "not_configured",
            Self::Fallback(Fallback::Throttled) => "throttled",
            Self::Fallback(Fallback::RateLimited) => "rate_limited",
            Self::Fallback(Fallback::NotFound) => "not_found",
            Self::Fallback(Fallback::Timeout) => "timeout",
            Self::Fallback(Fallback::Failed) => "failed",
        }
    }

    fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|o| *o == self)
            .expect("every outcome is listed")
    }
}

type FlightResult = Result<Arc<Fetched>, Fallback>;

/// (object, id, `after` in unix seconds).
type FlightKey = (ObjectKind, String, u64);

pub struct Refetcher {
    client: Option<StripeClient>,
    bucket: Mutex<TokenBucket>,
    flights: Mutex<HashMap<FlightKey, Arc<OnceCell<FlightResult>>>>,
    counts: [AtomicU64; Outcome::ALL.len()],
}

impl std::fmt::Debug for Refetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refetcher")
            .field("enabled", &self.is_enabled())
            .finish_non_exhaustive()
    }
}

impl Refetcher {
    /// A refetcher for `config`: disabled (never calls Stripe) without a secret key.
    pub fn from_config(config: &StripeConfig) -> Result<Self, StripeApiError> {
        Ok(Self::new(
            StripeClient::from_config(config)?,
            config.refetch_rate,
        ))
    }

    /// `rate` requests per second at most, in bursts of up to `rate` (0: none at all).
    pub fn new(client: Option<StripeClient>, rate: u32) -> Self {
        Self {
            client,
            bucket: Mutex::new(TokenBucket::new(rate, Instant::now())),
            flights: Mutex::new(HashMap::new()),
            counts: Default::default(),
        }
    }

    /// One that never calls Stripe.
    pub fn disabled() -> Self {
        Self::new(None, 0)
    }

    /// Whether a secret key is configured (a refetch may then reach Stripe).
    pub fn is_enabled(&self) -> bool {
        self.client.is_some()
    }

    /// How many calls on this instance ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.counts[outcome.index()].load(Ordering::Relaxed)
    }

    /// The object as Stripe has it at some moment at or after `after`: the request is not
    /// sent before then (waiting at most 3 s). Concurrent calls for the same object and the
    /// same `after` second share one request.
    pub async fn refetch(&self, kind: ObjectKind, id: &str, after: SystemTime) -> FlightResult {
        let after_secs = after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let key: FlightKey = (kind, id.to_string(), after_secs);
        let flight = lock(&self.flights).entry(key.clone()).or_default().clone();
        let mut requested = false;
        let result = flight
            .get_or_init(|| {
                requested = true;
                self.request(kind, id, after)
            })
            .await
            .clone();
        if requested {
            // The flight has its result: later callers start a new one.
            let mut flights = lock(&self.flights);
            if flights.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                flights.remove(&key);
            }
        }
        let outcome = match (&result, requested) {
            (Ok(_), true) => Outcome::Fetched,
            (Ok(_), false) => Outcome::Shared,
            (Err(fallback), _) => Outcome::Fallback(*fallback),
        };
        self.counts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "tollgate_stripe_refetch_total",
            "object" => kind.as_str(),
            "outcome" => outcome.as_str()
        )
        .increment(1);
        result
    }

    /// The one request of a flight.
    async fn request(&self, kind: ObjectKind, id: &str, after: SystemTime) -> FlightResult {
        let Some(client) = &self.client else {
            return Err(Fallback::NotConfigured);
        };
        if let Ok(wait) = after.duration_since(SystemTime::now()) {
            tokio::time::sleep(wait.min(MAX_WAIT)).await;
        }
        if !lock(&self.bucket).try_take(Instant::now()) {
            tracing::warn!(
                object = kind.as_str(),
                id,
                "Stripe refetch skipped: STRIPE_REFETCH_RATE reached"
            );
            return Err(Fallback::Throttled);
        }
        let requested_at = SystemTime::now();
        match client.retrieve(kind, id).await {
            Ok(object) => Ok(Arc::new(Fetched {
                object,
                requested_at,
            })),
            Err(error) => {
                tracing::warn!(object = kind.as_str(), id, %error, "Stripe refetch failed");
                Err(match error {
                    StripeApiError::NotConfigured => Fallback::NotConfigured,
                    StripeApiError::NotFound(_) => Fallback::NotFound,
                    StripeApiError::RateLimited => Fallback::RateLimited,
                    StripeApiError::Timeout(_) => Fallback::Timeout,
                    StripeApiError::Rejected(_) | StripeApiError::Other(_) => Fallback::Failed,
                })
            }
        }
    }
}

/// The critical sections hold no await and cannot leave the data half-written, so a
/// panic elsewhere while the lock was held does not make it unusable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `rate` tokens a second, holding at most `rate` (a one-second burst); starts full.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_one_second_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(3, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start), "burst spent");
        assert!(!bucket.try_take(start + Duration::from_millis(300)));
        assert!(
            bucket.try_take(start + Duration::from_millis(340)),
            "1/3 s refills one"
        );
        assert!(!bucket.try_take(start + Duration::from_millis(340)));
        // A long pause refills to the burst, no more.
        let later = start + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take(later)));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn a_zero_rate_never_allows_a_request() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, start);
        assert!(!bucket.try_take(start));
        assert!(!bucket.try_take(start + Duration::from_secs(3600)));
    }

    #[tokio::test]
    async fn without_a_key_nothing_is_requested() {
        let refetcher = Refetcher::disabled();
        assert!(!refetcher.is_enabled());
        let result = refetcher
            .refetch(ObjectKind::Subscription, "sub_1", UNIX_EPOCH)
            .await;
        assert_eq!(result.unwrap_err(), Fallback::NotConfigured);
        assert_eq!(
            refetcher.count(Outcome::Fallback(Fallback::NotConfigured)),
            1
        );
    }
}
