//! A real SMTP server per test: aiosmtpd (Python) on a free loopback port,
//! keeping every accepted message, with one-shot faults to inject (a refused
//! recipient, a refused message, a connection dropped after the data).
//!
//! aiosmtpd lives in a virtualenv made by `scripts/python-tools.sh`
//! (`$HOME/.cache/tollgate/venv`, or `TOLLGATE_VENV`); the sink runs that
//! script once per test process, so a fresh machine needs nothing by hand.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The virtualenv's Python, after making sure aiosmtpd is installed in it.
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let ready = PYTHON.get_or_init(|| {
        let script = workspace().join("scripts/python-tools.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .status()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !status.success() {
            return Err(format!(
                "{} failed ({status}); run it by hand to see why",
                script.display()
            ));
        }
        let venv = std::env::var_os("TOLLGATE_VENV").map_or_else(
            || {
                let home = std::env::var_os("HOME").unwrap_or_default();
                Path::new(&home).join(".cache/tollgate/venv")
            },
            PathBuf::from,
        );
        Ok(venv.join("bin/python"))
    });
    match ready {
        Ok(python) => python,
        Err(e) => panic!(
            "the SMTP sink needs aiosmtpd in a virtualenv: {e}. \
             Create it with scripts/python-tools.sh (needs python3 with venv, and PyPI)"
        ),
    }
}

/// One message the sink accepted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SinkMessage {
    /// MAIL FROM.
    pub envelope_from: String,
    /// RCPT TO, in order.
    pub envelope_to: Vec<String>,
    pub from: String,
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub date: String,
    /// The decoded text/plain body, with `\n` line ends.
    pub body: String,
    /// The message as received.
    pub raw: String,
}

/// What the sink does to the next message that reaches the stage.
#[derive(Debug, Clone)]
pub enum SmtpFault {
    /// Answer RCPT TO with this reply, e.g. `550 5.1.1 no such user`.
    RefuseRecipient(&'static str),
    /// Answer the end of the data with this reply, e.g. `451 4.3.0 try again later`.
    RefuseMessage(&'static str),
    /// Take the message, then drop the connection without answering: the
    /// client cannot tell whether it was accepted.
    DropAfterData,
}

pub struct SmtpSink {
    child: Child,
    /// Kept open: the sink never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
    dir: PathBuf,
    port: u16,
}

impl SmtpSink {
    /// Starts a sink; returns once it accepts connections.
    pub async fn start() -> Self {
        let python = python();
        let dir =
            std::env::temp_dir().join(format!("tollgate-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating the sink's directory");
        let mut child = Command::new(python)
            .arg(workspace().join("crates/test-support/python/smtp_sink.py"))
            .arg(&dir)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the SMTP sink with {}: {e}", python.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first_line = String::new();
        let read = stdout.read_line(&mut first_line);
        let port = match tokio::time::timeout(Duration::from_secs(20), read).await {
            Ok(Ok(_)) => first_line.trim().parse::<u16>().ok(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("the SMTP sink did not report its port (got {first_line:?})"));
        let sink = Self {
            child,
            _stdout: stdout,
            dir,
            port,
        };
        // It prints the port once listening; check anyway.
        tokio::net::TcpStream::connect(sink.addr())
            .await
            .expect("the SMTP sink accepts connections");
        sink
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `smtp://127.0.0.1:<port>` (plain text), for `SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr())
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(self.dir.join("messages")) {
            Ok(entries) => entries
                .map(|e| e.expect("sink directory entry").path())
                .collect(),
            Err(_) => Vec::new(),
        };
        paths.sort();
        paths
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path).expect("reading a sink message");
                let mut message: SinkMessage =
                    serde_json::from_slice(&bytes).expect("a sink message is JSON");
                message.body = message.body.replace("\r\n", "\n");
                message
            })
            .collect()
    }

    /// Makes the next message that reaches the fault's stage fail that way (once).
    pub fn inject(&self, fault: SmtpFault) {
        let line = match fault {
            SmtpFault::RefuseRecipient(reply) => format!("rcpt {reply}\n"),
            SmtpFault::RefuseMessage(reply) => format!("data {reply}\n"),
            SmtpFault::DropAfterData => "data drop\n".to_string(),
        };
        let tmp = self.dir.join(".fault.tmp");
        std::fs::write(&tmp, line).expect("writing the fault");
        std::fs::rename(&tmp, self.dir.join("fault")).expect("arming the fault");
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
