//! Per-tier usage quotas in Redis, shared by every replica: a daily and a monthly
//! sliding window per (customer, feature), each a hash of fixed buckets (15
//! minutes for the day, one day for the month). A window's oldest bucket counts
//! in full, so a limit is never exceeded; usage leaves the window at most one
//! bucket late. Checking and counting is one Lua script, atomic in Redis.

use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;
use tollgate_plans::Quota;

const DAY: i64 = 86_400;
const DAY_BUCKET: i64 = 900;
const MONTH: i64 = 30 * DAY;
const MONTH_BUCKET: i64 = DAY;
/// Idempotency keys of recorded usage are kept this long.
const KEY_TTL: i64 = 2 * DAY;

const SCRIPT: &str = r#"
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local dlimit = tonumber(ARGV[3])
local mlimit = tonumber(ARGV[4])
local record = ARGV[5] == '1'
local keyed = ARGV[6] == '1'
local function usage(key, window, bucket)
  local oldest = now - window
  local total = 0
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    if tonumber(fields[i]) + bucket <= oldest then
      redis.call('HDEL', key, fields[i])
    else
      total = total + tonumber(fields[i + 1])
    end
  end
  return total
end
local day, day_bucket = tonumber(ARGV[8]), tonumber(ARGV[9])
local month, month_bucket = tonumber(ARGV[10]), tonumber(ARGV[11])
local d = usage(KEYS[1], day, day_bucket)
local m = usage(KEYS[2], month, month_bucket)
if not record then return {1, d, m} end
if keyed and redis.call('EXISTS', KEYS[3]) == 1 then return {2, d, m} end
if (dlimit >= 0 and d + amount > dlimit) or (mlimit >= 0 and m + amount > mlimit) then
  return {0, d, m}
end
redis.call('HINCRBY', KEYS[1], tostring(now - now % day_bucket), amount)
redis.call('EXPIRE', KEYS[1], day + day_bucket)
redis.call('HINCRBY', KEYS[2], tostring(now - now % month_bucket), amount)
redis.call('EXPIRE', KEYS[2], month + month_bucket)
if keyed then redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[7])) end
return {1, d + amount, m + amount}
"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub daily: u64,
    pub monthly: u64,
}

impl Usage {
    /// Whether no more usage fits under the quota.
    pub fn exhausted(&self, quota: &Quota) -> bool {
        quota.daily.is_some_and(|l| self.daily >= l)
            || quota.monthly.is_some_and(|l| self.monthly >= l)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Counted(Usage),
    /// The idempotency key was seen: nothing counted again.
    Replayed(Usage),
    /// It would exceed a limit: nothing counted.
    Refused(Usage),
}

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct Quotas {
    client: redis::Client,
    connection: OnceCell<ConnectionManager>,
    prefix: String,
    script: Script,
    timeout: Duration,
}

impl Quotas {
    pub fn new(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            connection: OnceCell::new(),
            prefix: prefix.to_string(),
            script: Script::new(SCRIPT),
            timeout: Duration::from_millis(500),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, QuotaError> {
        // Connects on first use (Redis may start after us); reconnects by itself after.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let connection = self
            .connection
            .get_or_try_init(|| ConnectionManager::new_with_config(self.client.clone(), config))
            .await?;
        Ok(connection.clone())
    }

    fn keys(&self, owner: &str, feature: &str) -> (String, String) {
        // The hash tag keeps one owner's keys in one cluster slot.
        (
            format!("{}usage:{{{owner}}}:{feature}:d", self.prefix),
            format!("{}usage:{{{owner}}}:{feature}:m", self.prefix),
        )
    }

    async fn run(
        &self,
        owner: &str,
        feature: &str,
        amount: u64,
        quota: &Quota,
        record: bool,
        idempotency_key: Option<&str>,
    ) -> Result<(i64, Usage), QuotaError> {
        let (daily, monthly) = self.keys(owner, feature);
        let key = match idempotency_key {
            Some(k) => format!("{}usage-key:{{{owner}}}:{feature}:{k}", self.prefix),
            None => format!("{}usage-key:{{{owner}}}:-", self.prefix),
        };
        let limit = |l: Option<u64>| l.map_or(-1, |l| l.min(i64::MAX as u64) as i64);
        let now = chrono::Utc::now().timestamp();
        let mut connection = self.connection().await?;
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(daily)
            .key(monthly)
            .key(key)
            .arg(now)
            .arg(amount)
            .arg(limit(quota.daily))
            .arg(limit(quota.monthly))
            .arg(if record { "1" } else { "0" })
            .arg(if idempotency_key.is_some() { "1" } else { "0" })
            .arg(KEY_TTL)
            .arg(DAY)
            .arg(DAY_BUCKET)
            .arg(MONTH)
            .arg(MONTH_BUCKET);
        let answer: Vec<i64> =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| QuotaError::Timeout(self.timeout))??;
        let usage = Usage {
            daily: answer.get(1).copied().unwrap_or(0).max(0) as u64,
            monthly: answer.get(2).copied().unwrap_or(0).max(0) as u64,
        };
        Ok((answer.first().copied().unwrap_or(0), usage))
    }

    pub async fn usage(
        &self,
        owner: &str,
        feature: &str,
        quota: &Quota,
    ) -> Result<Usage, QuotaError> {
        Ok(self.run(owner, feature, 0, quota, false, None).await?.1)
    }

    pub async fn record(
        &self,
        owner: &str,
        feature: &str,
        amount: u64,
        quota: &Quota,
        idempotency_key: Option<&str>,
    ) -> Result<Recorded, QuotaError> {
        let (outcome, usage) = self
            .run(owner, feature, amount, quota, true, idempotency_key)
            .await?;
        Ok(match outcome {
            1 => Recorded::Counted(usage),
            2 => Recorded::Replayed(usage),
            _ => Recorded::Refused(usage),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_when_either_window_is_full() {
        let quota = Quota {
            daily: Some(10),
            monthly: Some(100),
        };
        assert!(
            !Usage {
                daily: 9,
                monthly: 9
            }
            .exhausted(&quota)
        );
        assert!(
            Usage {
                daily: 10,
                monthly: 10
            }
            .exhausted(&quota)
        );
        assert!(
            Usage {
                daily: 0,
                monthly: 100
            }
            .exhausted(&quota)
        );
        assert!(
            !Usage {
                daily: 1000,
                monthly: 1000
            }
            .exhausted(&Quota::default())
        );
    }

    #[test]
    fn buckets_divide_their_windows() {
        assert_eq!(DAY % DAY_BUCKET, 0);
        assert_eq!(MONTH % MONTH_BUCKET, 0);
    }
}
