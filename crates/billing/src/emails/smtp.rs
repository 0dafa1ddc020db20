//! SMTP: `SMTP_URL`, and one session driven command by command, so that every
//! failure is known to have happened before or after the server could have
//! accepted the message.
//!
//! lettre's low-level connection is used rather than its transport: the
//! transport's `send` runs MAIL, RCPT, DATA and the message as one call, and
//! its errors do not say which step failed, so "rejected before the data" (safe
//! to retry) could not be told from "connection lost after the data" (maybe
//! delivered: never retried).

use std::net::IpAddr;
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt};
use lettre::transport::smtp::extension::ClientId;

/// How long one SMTP step may take (connect, TLS, one command, the message).
/// Seven steps at most per message: well within the sender's lease.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Transport security, from the URL's scheme and `tls` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// `smtps://`: TLS from the first byte (port 465).
    Implicit,
    /// `smtp://...?tls=required`: STARTTLS, and no sending without it.
    Required,
    /// `smtp://...?tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtp://` (or `?tls=none`): plain text; for a local relay or test sink.
    None,
}

/// Where and how to submit mail. Prints without the password.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    credentials: Option<Credentials>,
    tls_parameters: Option<TlsParameters>,
    redacted: String,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl SmtpSettings {
    /// Parses `smtp://[user:password@]host[:port][?tls=required|opportunistic|none]`
    /// or `smtps://[user:password@]host[:port]`. User and password are
    /// percent-decoded. `extra_roots` (PEM) are trusted besides the public
    /// roots, for a relay with a private CA. Errors never contain the password.
    pub fn parse(raw: &str, extra_roots: Option<&[u8]>) -> Result<Self, String> {
        let redacted = tollgate_runtime::config::redact_url(raw);
        let url = url::Url::parse(raw).map_err(|e| format!("not a URL ({e}): {redacted}"))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("no host in {redacted}"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut tls_parameter = None;
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "tls" => tls_parameter = Some(value.into_owned()),
                other => return Err(format!("unknown parameter `{other}` (known: tls)")),
            }
        }
        let tls = match (url.scheme(), tls_parameter.as_deref()) {
            ("smtps", None) => Tls::Implicit,
            ("smtps", Some(_)) => {
                return Err("smtps:// is always TLS; `tls=` is for smtp:// (STARTTLS)".into());
            }
            ("smtp", None | Some("none")) => Tls::None,
            ("smtp", Some("required")) => Tls::Required,
            ("smtp", Some("opportunistic")) => Tls::Opportunistic,
            ("smtp", Some(other)) => {
                return Err(format!(
                    "tls={other} (expected required, opportunistic or none)"
                ));
            }
            (scheme, _) => {
                return Err(format!("scheme {scheme}:// (expected smtp:// or smtps://)"));
            }
        };
        let port = url.port().unwrap_or(match tls {
            Tls::Implicit => 465,
            Tls::Required | Tls::Opportunistic => 587,
            Tls::None => 25,
        });
        let credentials = if url.username().is_empty() {
            None
        } else {
            let user = percent_decode(url.username()).ok_or("the user name is not valid UTF-8")?;
            let password = percent_decode(url.password().unwrap_or(""))
                .ok_or("the password is not valid UTF-8")?;
            Some(Credentials::new(user, password))
        };
        if credentials.is_some() && tls == Tls::None && !is_loopback(&host) {
            return Err(format!(
                "credentials would cross the network unencrypted to {host}: use smtps:// or ?tls=required"
            ));
        }
        let tls_parameters = match tls {
            Tls::None => None,
            _ => {
                let mut builder = TlsParameters::builder(host.clone());
                if let Some(pem) = extra_roots {
                    let marker = b"-----BEGIN CERTIFICATE-----";
                    if !pem.windows(marker.len()).any(|w| w == marker) {
                        return Err("no PEM certificate among the extra root certificates".into());
                    }
                    let roots = Certificate::from_pem(pem)
                        .map_err(|e| format!("the extra root certificates: {e}"))?;
                    builder = builder.add_root_certificate(roots);
                }
                Some(
                    builder
                        .build()
                        .map_err(|e| format!("TLS setup for {host}: {e}"))?,
                )
            }
        };
        Ok(Self {
            host,
            port,
            tls,
            credentials,
            tls_parameters,
            redacted,
        })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The step of a session a failure happened in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Connecting, greeting, EHLO, STARTTLS, AUTH: nothing about this message yet.
    Session,
    /// MAIL FROM: the sender, a policy of the server; not about this message.
    MailFrom,
    /// RCPT TO: this message's recipient.
    Recipient,
    /// The DATA command, before any of the message was sent.
    Data,
    /// The message and its final ".": the server may have accepted it.
    Message,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::MailFrom => "mail_from",
            Self::Recipient => "rcpt_to",
            Self::Data => "data",
            Self::Message => "message",
        }
    }
}

/// What a failure means for the email.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Certainly not accepted, and may succeed later: retry with backoff.
    Retry,
    /// Certainly not accepted, and the same message would be refused again.
    Reject,
    /// Maybe accepted (no reply to the final "."): never send again automatically.
    Unknown,
}

#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    /// The SMTP reply code, when the server answered.
    pub code: Option<u16>,
    pub verdict: Verdict,
    /// The error, for the outbox row. May quote the server's reply, which can
    /// name the recipient: never logged.
    pub detail: String,
}

enum Problem {
    Smtp(lettre::transport::smtp::Error),
    TimedOut,
    /// We would not go on (no STARTTLS, no login in clear text).
    Refused(&'static str),
}

impl Failure {
    fn new(step: Step, problem: Problem) -> Self {
        let (code, transient, permanent, detail) = match &problem {
            Problem::Smtp(e) => (
                e.status().map(u16::from),
                e.is_transient(),
                e.is_permanent(),
                e.to_string(),
            ),
            Problem::TimedOut => (
                None,
                false,
                false,
                format!("no answer within {STEP_TIMEOUT:?}"),
            ),
            Problem::Refused(why) => (None, false, false, (*why).to_string()),
        };
        Self {
            step,
            code,
            verdict: verdict(step, transient, permanent),
            detail: format!("{}: {detail}", step.as_str()),
        }
    }
}

/// The rule (docs/billing-state.md, "Emails"). Before the message is sent,
/// nothing was accepted: a refusal of the recipient or of the data is final
/// (5xx) or worth retrying (4xx); anything else (connection, TLS, login, a
/// refused sender: problems of the server or of our configuration, not of this
/// message) is retried. After the message was sent, only an actual reply is
/// certain: 4xx/5xx to the final "." mean not accepted; a lost connection, a
/// timeout or a garbled reply mean the server may have accepted it.
pub fn verdict(step: Step, transient: bool, permanent: bool) -> Verdict {
    match step {
        Step::Session | Step::MailFrom => Verdict::Retry,
        Step::Recipient | Step::Data if permanent => Verdict::Reject,
        Step::Recipient | Step::Data => Verdict::Retry,
        Step::Message if transient => Verdict::Retry,
        Step::Message if permanent => Verdict::Reject,
        Step::Message => Verdict::Unknown,
    }
}

async fn step<T>(
    step: Step,
    future: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(STEP_TIMEOUT, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failure::new(step, Problem::Smtp(e))),
        Err(_) => Err(Failure::new(step, Problem::TimedOut)),
    }
}

/// One open SMTP session, reused for several messages while it stays healthy.
/// Dropping it closes the connection (after a failure, without QUIT).
pub struct Session {
    connection: AsyncSmtpConnection,
}

impl Session {
    /// Connects, secures and logs in as `settings` say.
    pub async fn open(settings: &SmtpSettings) -> Result<Self, Failure> {
        let hello = ClientId::default();
        let implicit = match settings.tls {
            Tls::Implicit => settings.tls_parameters.clone(),
            _ => None,
        };
        let mut connection = step(
            Step::Session,
            AsyncSmtpConnection::connect_tokio1(
                (settings.host.as_str(), settings.port),
                Some(STEP_TIMEOUT),
                &hello,
                implicit,
                None,
            ),
        )
        .await?;
        if matches!(settings.tls, Tls::Required | Tls::Opportunistic) {
            let offered = connection.can_starttls();
            if let (true, Some(parameters)) = (offered, settings.tls_parameters.clone()) {
                step(Step::Session, connection.starttls(parameters, &hello)).await?;
            } else if settings.tls == Tls::Required {
                return Err(Failure::new(
                    Step::Session,
                    Problem::Refused("the server does not offer STARTTLS, and tls=required"),
                ));
            }
        }
        if let Some(credentials) = &settings.credentials {
            if !connection.is_encrypted() && !is_loopback(&settings.host) {
                return Err(Failure::new(
                    Step::Session,
                    Problem::Refused("refusing to log in over an unencrypted connection"),
                ));
            }
            let login = connection.auth(&[Mechanism::Plain, Mechanism::Login], credentials);
            step(Step::Session, login).await?;
        }
        Ok(Self { connection })
    }

    /// Submits one message; the server's reply to the final "." on success.
    /// After a failure the session must be dropped, not reused.
    pub async fn send(&mut self, envelope: &Envelope, message: &[u8]) -> Result<String, Failure> {
        let connection = &mut self.connection;
        // The formatted message is 7-bit (non-ASCII bodies are encoded): no
        // 8BITMIME or SMTPUTF8 parameters needed.
        let ascii_addresses = envelope
            .from()
            .into_iter()
            .chain(envelope.to())
            .all(|a| AsRef::<str>::as_ref(a).is_ascii());
        if !message.is_ascii() || !ascii_addresses {
            return Err(Failure {
                step: Step::MailFrom,
                code: None,
                verdict: Verdict::Reject,
                detail: "a non-ASCII address (SMTPUTF8) is not supported".into(),
            });
        }
        step(
            Step::MailFrom,
            connection.command(Mail::new(envelope.from().cloned(), vec![])),
        )
        .await?;
        for recipient in envelope.to() {
            step(
                Step::Recipient,
                connection.command(Rcpt::new(recipient.clone(), vec![])),
            )
            .await?;
        }
        step(Step::Data, connection.command(Data)).await?;
        let reply = step(Step::Message, connection.message(message)).await?;
        Ok(reply.message().collect::<Vec<_>>().join(" "))
    }

    /// Says goodbye (QUIT) if the session is still usable, then closes it.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(STEP_TIMEOUT, self.connection.quit()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_security() {
        let local = SmtpSettings::parse("smtp://127.0.0.1:1025", None).unwrap();
        assert_eq!(
            (local.host.as_str(), local.port, local.tls),
            ("127.0.0.1", 1025, Tls::None)
        );
        assert!(local.credentials.is_none());

        let submission = SmtpSettings::parse(
            "smtp://apikey:p%40ss%2Fword@smtp.example.com?tls=required",
            None,
        )
        .unwrap();
        assert_eq!((submission.port, submission.tls), (587, Tls::Required));
        assert!(submission.credentials.is_some());
        assert!(
            !format!("{submission:?}").contains("p%40ss"),
            "{submission:?}"
        );
        assert!(format!("{submission:?}").contains("smtp.example.com"));

        let implicit = SmtpSettings::parse("smtps://u:secret@mail.example.com", None).unwrap();
        assert_eq!((implicit.port, implicit.tls), (465, Tls::Implicit));
        assert_eq!(
            SmtpSettings::parse("smtp://relay.internal?tls=opportunistic", None)
                .unwrap()
                .tls,
            Tls::Opportunistic
        );
        assert_eq!(
            percent_decode("p%40ss%2Fword").as_deref(),
            Some("p@ss/word")
        );
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        for bad in [
            "http://u:secret@mail.example.com",
            "smtps://u:secret@mail.example.com?tls=required",
            "smtp://u:secret@mail.example.com?tls=maybe",
            "smtp://u:secret@mail.example.com?tsl=required",
            "smtp://u:secret@mail.example.com",
            "smtp://",
        ] {
            let error = SmtpSettings::parse(bad, None).unwrap_err();
            assert!(!error.contains("secret"), "{bad}: {error}");
        }
        assert!(
            SmtpSettings::parse("smtps://mail.example.com", Some(b"not a certificate")).is_err()
        );
        // Plain text with a login is fine on loopback (a local relay).
        assert!(SmtpSettings::parse("smtp://u:secret@localhost:2525", None).is_ok());
    }

    #[test]
    fn only_a_lost_answer_to_the_message_is_ambiguous() {
        use Verdict::*;
        assert_eq!(
            verdict(Step::Session, false, true),
            Retry,
            "a refused login is retried"
        );
        assert_eq!(verdict(Step::MailFrom, false, true), Retry);
        assert_eq!(verdict(Step::Recipient, false, true), Reject);
        assert_eq!(verdict(Step::Recipient, true, false), Retry);
        assert_eq!(
            verdict(Step::Data, false, false),
            Retry,
            "connection lost before the data"
        );
        assert_eq!(
            verdict(Step::Message, true, false),
            Retry,
            "451 after the data: not accepted"
        );
        assert_eq!(
            verdict(Step::Message, false, true),
            Reject,
            "554 after the data: refused"
        );
        assert_eq!(
            verdict(Step::Message, false, false),
            Unknown,
            "no reply after the data"
        );
    }
}
