//! A Redis key prefix per test: every key the test (or the service it runs) writes
//! under the prefix is deleted when the test ends, pass or fail.

/// Server the tests use: `TEST_REDIS_URL`, else `REDIS_URL`, else the local default.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .or_else(|_| std::env::var("REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub struct TestRedis {
    prefix: String,
}

impl TestRedis {
    /// A fresh `tollgate-test-<uuid>:` prefix.
    pub fn create() -> Self {
        Self {
            prefix: format!("tollgate-test-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn url(&self) -> String {
        redis_url()
    }

    /// How many keys exist under the prefix.
    pub fn key_count(&self) -> usize {
        self.keys().map_or(0, |k| k.len())
    }

    fn keys(&self) -> redis::RedisResult<Vec<String>> {
        let client = redis::Client::open(redis_url())?;
        let mut connection = client.get_connection()?;
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{}*", self.prefix))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter(&mut connection)?
            .collect::<Result<_, _>>()?;
        Ok(keys)
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let result = self.keys().and_then(|keys| {
            if keys.is_empty() {
                return Ok(());
            }
            let client = redis::Client::open(redis_url())?;
            let mut connection = client.get_connection()?;
            redis::cmd("DEL").arg(&keys).query::<()>(&mut connection)
        });
        if let Err(e) = result {
            eprintln!("warning: could not delete test keys {}*: {e}", self.prefix);
        }
    }
}
