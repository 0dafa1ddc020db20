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
    crate::workspace_root()
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
    /// The session was encrypted (STARTTLS or implicit TLS) when the message came.
    pub tls: bool,
    /// Who logged in (AUTH), if anyone.
    pub login: Option<String>,
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

/// How the sink talks: plain by default, or as a real submission server.
#[derive(Debug, Clone, Default)]
pub struct SinkOptions {
    /// Require STARTTLS, with a certificate for 127.0.0.1 and localhost from a
    /// throwaway CA ([`SmtpSink::certificate`]).
    pub tls: bool,
    /// Speak TLS from the first byte (what `smtps://` expects), same certificate.
    pub implicit_tls: bool,
    /// Require AUTH (PLAIN or LOGIN, over TLS) as this user and password.
    pub login: Option<(String, String)>,
}

impl SmtpSink {
    /// Starts a plain sink (no TLS, no login); returns once it accepts connections.
    pub async fn start() -> Self {
        Self::start_with(SinkOptions::default()).await
    }

    /// Starts a sink with `options`.
    pub async fn start_with(options: SinkOptions) -> Self {
        let python = python();
        let dir =
            std::env::temp_dir().join(format!("tollgate-smtp-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("creating the sink's directory");
        let mut command = Command::new(python);
        command
            .arg(workspace().join("crates/test-support/python/smtp_sink.py"))
            .arg(&dir);
        if options.tls {
            command.arg("--tls");
        }
        if options.implicit_tls {
            command.arg("--implicit-tls");
        }
        if let Some((user, password)) = &options.login {
            command.arg("--login").arg(format!("{user}:{password}"));
        }
        let mut child = command
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

    /// The PEM certificate of the throwaway CA that signed a `tls` sink's
    /// certificate: what a client must trust.
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::*;

    /// A minimal SMTP client: sends `lines`, each answered by one reply (the
    /// message body, sent in one go after DATA, counts as one); returns the
    /// reply codes after the greeting.
    async fn converse(addr: &str, lines: &[&str]) -> Vec<String> {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut reply = async || {
            // Multi-line replies ("250-...") end with "250 ...".
            loop {
                let mut line = String::new();
                if read.read_line(&mut line).await.unwrap() == 0 {
                    return "closed".to_string();
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line[..3].to_string();
                }
            }
        };
        assert_eq!(reply().await, "220");
        let mut codes = Vec::new();
        for line in lines {
            write.write_all(line.as_bytes()).await.unwrap();
            codes.push(reply().await);
        }
        codes
    }

    #[tokio::test]
    async fn keeps_what_it_accepts_decoded_and_injects_faults_once() {
        let sink = SmtpSink::start().await;
        let message = "From: Billing <billing@example.com>\r\nTo: ana@example.org\r\n\
                       Subject: =?utf-8?q?Caf=C3=A9?=\r\nMessage-ID: <m1@example.com>\r\n\
                       Content-Type: text/plain; charset=utf-8\r\n\
                       Content-Transfer-Encoding: quoted-printable\r\n\r\n\
                       Total: 3=E2=82=AC\r\n.\r\n";
        let codes = converse(
            &sink.addr(),
            &[
                "EHLO test\r\n",
                "MAIL FROM:<billing@example.com>\r\n",
                "RCPT TO:<ana@example.org>\r\n",
                "DATA\r\n",
                message,
                "QUIT\r\n",
            ],
        )
        .await;
        assert_eq!(codes, ["250", "250", "250", "354", "250", "221"]);
        let messages = sink.messages();
        assert_eq!(messages.len(), 1);
        let kept = &messages[0];
        assert_eq!((kept.tls, kept.login.as_deref()), (false, None));
        assert_eq!(kept.envelope_from, "billing@example.com");
        assert_eq!(kept.envelope_to, ["ana@example.org"]);
        assert_eq!(kept.subject, "Café");
        assert_eq!(kept.message_id, "<m1@example.com>");
        assert_eq!(kept.body, "Total: 3€\n");

        sink.inject(SmtpFault::RefuseRecipient("550 5.1.1 no such user"));
        let codes = converse(
            &sink.addr(),
            &[
                "HELO test\r\n",
                "MAIL FROM:<billing@example.com>\r\n",
                "RCPT TO:<nobody@example.org>\r\n",
                "RCPT TO:<ana@example.org>\r\n",
            ],
        )
        .await;
        assert_eq!(codes, ["250", "250", "550", "250"], "the fault fires once");

        sink.inject(SmtpFault::DropAfterData);
        let codes = converse(
            &sink.addr(),
            &[
                "HELO test\r\n",
                "MAIL FROM:<billing@example.com>\r\n",
                "RCPT TO:<ana@example.org>\r\n",
                "DATA\r\n",
                "Subject: two\r\n\r\nhello\r\n.\r\n",
            ],
        )
        .await;
        assert_eq!(codes, ["250", "250", "250", "354", "closed"]);
        assert_eq!(sink.messages().len(), 2, "taken, though never confirmed");
    }
}
