//! The real service binaries as child processes, their JSON logs read as they come
//! (readiness here is what a log line says: entitlements' change feed being live, not
//! just its port answering).

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

#[derive(Default)]
struct Logs {
    lines: Mutex<Vec<serde_json::Value>>,
    arrived: Notify,
}

pub struct Service {
    name: &'static str,
    child: Child,
    logs: Arc<Logs>,
}

impl Service {
    /// Starts `program` with only `env` (plus JSON logs), reading its stdout.
    pub fn start(name: &'static str, program: &str, env: &[(&str, String)]) -> Self {
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let logs = Arc::new(Logs::default());
        let stdout = child.stdout.take().expect("stdout is piped");
        let reading = logs.clone();
        // Drained continuously, so a full pipe never blocks the service.
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let json = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                reading.lines.lock().push(json);
                reading.arrived.notify_waiters();
            }
        });
        Self { name, child, logs }
    }

    /// The first log line whose message is `message`, waiting up to `timeout`.
    pub async fn wait_for_log(&mut self, message: &str, timeout: Duration) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.logs.arrived.notified();
            if let Some(line) = self
                .logs
                .lines
                .lock()
                .iter()
                .find(|l| l["message"] == message)
            {
                return line.clone();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before logging `{message}`; its logs:\n{}",
                    self.name,
                    self.dump()
                );
            }
            // Woken by each line; the short cap notices an exit that logs nothing.
            let wait = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .min(Duration::from_millis(200));
            if wait.is_zero() {
                panic!(
                    "{} did not log `{message}` in {timeout:?}; its logs:\n{}",
                    self.name,
                    self.dump()
                );
            }
            let _ = tokio::time::timeout(wait, arrived).await;
        }
    }

    fn dump(&self) -> String {
        self.logs
            .lines
            .lock()
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
