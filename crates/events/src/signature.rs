//! Stripe webhook signatures (`Stripe-Signature` header).
//!
//! Scheme: `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, where each `v1` is the
//! lowercase hex HMAC-SHA256, keyed with the whole `whsec_...` secret, of
//! `"<t>.<raw body>"`. Several `v1` values appear while Stripe rolls a secret;
//! we accept when any `v1` matches any configured secret.
//!
//! Policy (documented in docs/webhook-signatures.md):
//! - Timestamps older than the tolerance are rejected; an age exactly equal to the
//!   tolerance is accepted (as Stripe's own libraries do).
//! - Timestamps in the future are accepted up to the same tolerance (clock skew)
//!   and rejected beyond it: a far-future signature would otherwise stay
//!   replayable for as long as its timestamp is ahead of us.
//! - Header items are `key=value` separated by commas; unknown keys (`v0`, future
//!   schemes) are ignored; an item without `=`, a missing, repeated or
//!   non-numeric `t`, or an oversized header is malformed. A `v1` that is not
//!   64 hex digits can never match and is skipped.
//! - Comparison is constant-time per candidate; the HMAC is computed once per
//!   secret, whatever the number of `v1` values.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Longest header we parse; real ones are ~150 bytes, a few hundred while rolling.
pub const MAX_HEADER_LEN: usize = 4096;
/// Most `v1` values we consider in one header.
pub const MAX_SIGNATURES: usize = 8;
/// Stripe's default tolerance.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// One webhook signing secret. Never printed.
#[derive(Clone)]
pub struct SigningSecret(String);

impl SigningSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(self.0.as_bytes()).expect("HMAC accepts keys of any length")
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

/// The configured secrets; more than one while a secret is being rotated.
#[derive(Clone, Debug)]
pub struct WebhookSecrets(Vec<SigningSecret>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretsError {
    #[error("no secret given")]
    Empty,
    #[error("secret number {0} in the comma-separated list is empty")]
    EmptyEntry(usize),
}

impl WebhookSecrets {
    /// Parses a comma-separated list (`whsec_a,whsec_b`); surrounding spaces are trimmed.
    pub fn parse(list: &str) -> Result<Self, SecretsError> {
        if list.trim().is_empty() {
            return Err(SecretsError::Empty);
        }
        list.split(',')
            .enumerate()
            .map(|(i, s)| match s.trim() {
                "" => Err(SecretsError::EmptyEntry(i + 1)),
                s => Ok(SigningSecret::new(s)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Verifies `header` against `body` at time `now` (unix seconds).
    pub fn verify(
        &self,
        header: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: u64,
    ) -> Result<(), SignatureError> {
        let parsed = SignatureHeader::parse(header)?;
        let tolerance = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
        let age = now.saturating_sub(parsed.timestamp);
        if age > tolerance {
            return Err(SignatureError::TimestampTooOld);
        }
        if age < -tolerance {
            return Err(SignatureError::TimestampInFuture);
        }
        let mut matched = subtle::Choice::from(0);
        for secret in &self.0 {
            let expected = signed_payload_mac(secret, parsed.timestamp_raw, body);
            for candidate in &parsed.v1 {
                matched |= expected.as_slice().ct_eq(candidate.as_slice());
            }
        }
        if bool::from(matched) {
            Ok(())
        } else {
            Err(SignatureError::Mismatch)
        }
    }
}

/// Why a signature was refused. `reason()` is the stable label used in metrics.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone, Copy)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    MissingHeader,
    #[error("the Stripe-Signature header is malformed")]
    MalformedHeader,
    #[error("the Stripe-Signature header has no v1 signature")]
    NoV1Signature,
    #[error("the signature timestamp is older than the tolerance")]
    TimestampTooOld,
    #[error("the signature timestamp is too far in the future")]
    TimestampInFuture,
    #[error("no signature matches the payload")]
    Mismatch,
}

impl SignatureError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::MalformedHeader => "malformed_header",
            Self::NoV1Signature => "no_v1_signature",
            Self::TimestampTooOld => "timestamp_too_old",
            Self::TimestampInFuture => "timestamp_in_future",
            Self::Mismatch => "mismatch",
        }
    }
}

/// A parsed `Stripe-Signature` header: the timestamp and the `v1` signatures that
/// `verify` checks; unknown schemes and undecodable `v1` values are already dropped.
/// `Display` writes it back in Stripe's format, with the timestamp exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    timestamp: i64,
    /// The timestamp exactly as sent: it is what was signed.
    timestamp_raw: &'a str,
    v1: Vec<[u8; 32]>,
}

impl<'a> SignatureHeader<'a> {
    /// Parses a header by the rules in the module documentation.
    pub fn parse(header: &'a str) -> Result<Self, SignatureError> {
        if header.len() > MAX_HEADER_LEN {
            return Err(SignatureError::MalformedHeader);
        }
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for item in header.split(',') {
            let (key, value) = item
                .trim()
                .split_once('=')
                .ok_or(SignatureError::MalformedHeader)?;
            match key {
                "t" => {
                    let is_digits = !value.is_empty()
                        && value.len() <= 18
                        && value.bytes().all(|b| b.is_ascii_digit());
                    if timestamp.is_some() || !is_digits {
                        return Err(SignatureError::MalformedHeader);
                    }
                    let seconds: i64 =
                        value.parse().map_err(|_| SignatureError::MalformedHeader)?;
                    timestamp = Some((seconds, value));
                }
                "v1" => {
                    let mut bytes = [0u8; 32];
                    if hex::decode_to_slice(value, &mut bytes).is_ok() && v1.len() < MAX_SIGNATURES
                    {
                        v1.push(bytes);
                    }
                }
                _ => {}
            }
        }
        let (timestamp, timestamp_raw) = timestamp.ok_or(SignatureError::MalformedHeader)?;
        if v1.is_empty() {
            return Err(SignatureError::NoV1Signature);
        }
        Ok(Self {
            timestamp,
            timestamp_raw,
            v1,
        })
    }

    /// Unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The timestamp as sent (leading zeros kept): the signed payload starts with it.
    pub fn signed_timestamp(&self) -> &'a str {
        self.timestamp_raw
    }

    /// The decodable `v1` signatures, at most [`MAX_SIGNATURES`], in header order.
    pub fn signatures(&self) -> &[[u8; 32]] {
        &self.v1
    }
}

impl std::fmt::Display for SignatureHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t={}", self.timestamp_raw)?;
        for signature in &self.v1 {
            write!(f, ",v1={}", hex::encode(signature))?;
        }
        Ok(())
    }
}

fn signed_payload_mac(secret: &SigningSecret, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = secret.mac();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `v1` signature Stripe would send for `body` at `timestamp`.
pub fn compute_v1(secret: &SigningSecret, timestamp: i64, body: &[u8]) -> String {
    hex::encode(signed_payload_mac(secret, &timestamp.to_string(), body))
}

/// A whole `Stripe-Signature` header value, as Stripe sends it (used by our local
/// `tollgate trigger`, the tests and the benchmark).
pub fn sign_header(secret: &SigningSecret, timestamp: i64, body: &[u8]) -> String {
    let timestamp_raw = timestamp.to_string();
    SignatureHeader {
        timestamp,
        timestamp_raw: &timestamp_raw,
        v1: vec![signed_payload_mac(secret, &timestamp_raw, body)],
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid"}"#;

    fn secrets(list: &str) -> WebhookSecrets {
        WebhookSecrets::parse(list).unwrap()
    }

    fn v1(secret: &str, t: i64, body: &[u8]) -> String {
        compute_v1(&SigningSecret::new(secret), t, body)
    }

    #[test]
    fn known_vector_matches_an_independent_hmac() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'whsec_test', b'1700000000.{}', hashlib.sha256).hexdigest())"
        assert_eq!(
            v1("whsec_test", NOW, b"{}"),
            "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
        assert_eq!(
            sign_header(&SigningSecret::new("whsec_test"), NOW, b"{}"),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn valid_signature_is_accepted() {
        let header = format!("t={NOW},v1={}", v1("whsec_a", NOW, BODY));
        assert_eq!(secrets("whsec_a").verify(&header, BODY, NOW, 300), Ok(()));
    }

    #[test]
    fn rotated_secrets_accept_the_good_v1_first_or_last() {
        let good = v1("whsec_new", NOW, BODY);
        let other = v1("whsec_unrelated", NOW, BODY);
        let s = secrets("whsec_old, whsec_new");
        assert_eq!(
            s.verify(&format!("t={NOW},v1={good},v1={other}"), BODY, NOW, 300),
            Ok(())
        );
        assert_eq!(
            s.verify(&format!("t={NOW},v1={other},v1={good}"), BODY, NOW, 300),
            Ok(())
        );
        // The matching secret may also be the first configured one.
        let s = secrets("whsec_new,whsec_old");
        assert_eq!(
            s.verify(&format!("t={NOW},v1={other},v1={good}"), BODY, NOW, 300),
            Ok(())
        );
    }

    #[test]
    fn tampered_body_is_refused() {
        let header = format!("t={NOW},v1={}", v1("whsec_a", NOW, BODY));
        let tampered = br#"{"id":"evt_1","type":"invoice.paid "}"#;
        assert_eq!(
            secrets("whsec_a").verify(&header, tampered, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let header = format!("t={NOW},v1={}", v1("whsec_b", NOW, BODY));
        assert_eq!(
            secrets("whsec_a").verify(&header, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn signed_timestamp_is_bound_to_the_signature() {
        // Re-using a signature with a fresher `t` must fail: `t` is part of what is signed.
        let header = format!("t={},v1={}", NOW + 1, v1("whsec_a", NOW, BODY));
        assert_eq!(
            secrets("whsec_a").verify(&header, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_boundary_timestamps() {
        let s = secrets("whsec_a");
        let at = |t: i64| format!("t={t},v1={}", v1("whsec_a", t, BODY));
        assert_eq!(
            s.verify(&at(NOW - 300), BODY, NOW, 300),
            Ok(()),
            "exactly at the tolerance"
        );
        assert_eq!(
            s.verify(&at(NOW - 301), BODY, NOW, 300),
            Err(SignatureError::TimestampTooOld)
        );
        assert_eq!(
            s.verify(&at(NOW + 300), BODY, NOW, 300),
            Ok(()),
            "skew within tolerance"
        );
        assert_eq!(
            s.verify(&at(NOW + 301), BODY, NOW, 300),
            Err(SignatureError::TimestampInFuture)
        );
        assert_eq!(
            s.verify(&at(NOW - 3600), BODY, NOW, 7200),
            Ok(()),
            "configurable tolerance"
        );
    }

    #[test]
    fn malformed_headers() {
        let s = secrets("whsec_a");
        let sig = v1("whsec_a", NOW, BODY);
        for header in [
            "",
            "garbage",
            "t=,v1=abc",
            &format!("v1={sig}"),
            &format!("t=abc,v1={sig}"),
            &format!("t=-5,v1={sig}"),
            &format!("t={NOW},t={NOW},v1={sig}"),
            &format!("t={NOW};v1={sig}"),
            &"x".repeat(MAX_HEADER_LEN + 1),
        ] {
            assert_eq!(
                s.verify(header, BODY, NOW, 300),
                Err(SignatureError::MalformedHeader),
                "header {header:?}"
            );
        }
    }

    #[test]
    fn v0_only_or_undecodable_v1_means_no_signature() {
        let s = secrets("whsec_a");
        let sig = v1("whsec_a", NOW, BODY);
        assert_eq!(
            s.verify(&format!("t={NOW},v0={sig}"), BODY, NOW, 300),
            Err(SignatureError::NoV1Signature)
        );
        assert_eq!(
            s.verify(&format!("t={NOW},v1=zz{}", &sig[2..]), BODY, NOW, 300),
            Err(SignatureError::NoV1Signature)
        );
        // Upper-case hex decodes to the same bytes; Stripe sends lower case but accepting is harmless.
        assert_eq!(
            s.verify(
                &format!("t={NOW},v1={}", sig.to_uppercase()),
                BODY,
                NOW,
                300
            ),
            Ok(())
        );
        // v0 beside a good v1 is ignored.
        assert_eq!(
            s.verify(&format!("t={NOW},v0=deadbeef,v1={sig}"), BODY, NOW, 300),
            Ok(())
        );
    }

    #[test]
    fn a_parsed_header_renders_what_verify_checks() {
        let sig = v1("whsec_a", NOW, BODY);
        let header = format!(" t=000{NOW}, v0=ab ,v1=zz,v1={} ,x=1", sig.to_uppercase());
        let parsed = SignatureHeader::parse(&header).unwrap();
        assert_eq!(parsed.timestamp(), NOW);
        assert_eq!(parsed.signed_timestamp(), format!("000{NOW}"));
        let rendered = parsed.to_string();
        // Unknown schemes and undecodable signatures are gone, the timestamp stays as sent.
        assert_eq!(rendered, format!("t=000{NOW},v1={sig}"));
        assert_eq!(SignatureHeader::parse(&rendered).unwrap(), parsed);
        // "000<t>" is not what was signed for t: both forms fail alike.
        let s = secrets("whsec_a");
        assert_eq!(
            s.verify(&header, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            s.verify(&rendered, BODY, NOW, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn at_most_eight_signatures_are_kept() {
        let sig = v1("whsec_a", NOW, BODY);
        let other = v1("whsec_b", NOW, BODY);
        let header = format!(
            "t={NOW}{},v1={sig}",
            format!(",v1={other}").repeat(MAX_SIGNATURES)
        );
        let parsed = SignatureHeader::parse(&header).unwrap();
        assert_eq!(parsed.signatures().len(), MAX_SIGNATURES);
        assert_eq!(
            secrets("whsec_a").verify(&header, BODY, NOW, 300),
            Err(SignatureError::Mismatch),
            "the ninth is not considered"
        );
    }

    #[test]
    fn secrets_list_parsing() {
        assert_eq!(secrets(" whsec_a , whsec_b ").len(), 2);
        assert_eq!(WebhookSecrets::parse("").unwrap_err(), SecretsError::Empty);
        assert_eq!(
            WebhookSecrets::parse("whsec_a,,whsec_b").unwrap_err(),
            SecretsError::EmptyEntry(2)
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = secrets("whsec_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
