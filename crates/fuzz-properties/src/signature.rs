//! `Stripe-Signature`: parsing, rendering, verifying and signing.
//!
//! Input: `header \n secrets \n now \n tolerance \n body` (`now` and `tolerance`
//! in decimal; a missing or unreadable one takes a default), so seeds are
//! readable and a mutation of any part stays meaningful.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tollgate_events::signature::{self, MAX_HEADER_LEN, MAX_SIGNATURES};
use tollgate_events::{SignatureError, SignatureHeader, SigningSecret, WebhookSecrets};

const DEFAULT_SECRET: &str = "whsec_fuzz";
const DEFAULT_NOW: i64 = 1_700_000_000;
/// One past the largest timestamp a header may carry (18 digits).
const TIMESTAMP_LIMIT: i64 = 1_000_000_000_000_000_000;

/// One verification, as read from the fuzzer's bytes.
#[derive(Debug)]
pub struct Case<'a> {
    pub header: String,
    pub secrets: String,
    pub now: i64,
    pub tolerance: u64,
    pub body: &'a [u8],
}

impl<'a> Case<'a> {
    pub fn read(data: &'a [u8]) -> Self {
        let mut parts = data.splitn(5, |b| *b == b'\n');
        let mut text = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
        let header = text();
        let secrets = text();
        let now = text().trim().parse().unwrap_or(DEFAULT_NOW);
        let tolerance = text()
            .trim()
            .parse()
            .unwrap_or(signature::DEFAULT_TOLERANCE_SECS);
        Self {
            header,
            secrets,
            now,
            tolerance,
            body: parts.next().unwrap_or_default(),
        }
    }
}

pub fn check(data: &[u8]) {
    let case = Case::read(data);
    let secrets = configured_secrets(&case.secrets);
    let list = WebhookSecrets::parse(&secrets.join(",")).expect("non-empty entries parse");
    assert_eq!(list.len(), secrets.len());

    let verdict = list.verify(&case.header, case.body, case.now, case.tolerance);
    assert_eq!(
        verdict,
        list.verify(&case.header, case.body, case.now, case.tolerance),
        "verify is deterministic"
    );
    if let Err(error) = verdict {
        assert!(REASONS.contains(&error.reason()), "{error:?}");
    }
    match SignatureHeader::parse(&case.header) {
        Err(error) => {
            assert_eq!(verdict, Err(error), "a header that does not parse");
            assert!(matches!(
                error,
                SignatureError::MalformedHeader | SignatureError::NoV1Signature
            ));
        }
        Ok(parsed) => {
            assert!(case.header.len() <= MAX_HEADER_LEN);
            check_parsed(&parsed, &case, &secrets, verdict);
            // Rendering keeps everything verify looks at.
            let rendered = parsed.to_string();
            assert_eq!(SignatureHeader::parse(&rendered).as_ref(), Ok(&parsed));
            assert_eq!(
                list.verify(&rendered, case.body, case.now, case.tolerance),
                verdict,
                "{rendered:?} verifies as {:?} does",
                case.header
            );
        }
    }
    check_signing(&list, &secrets, &case);
}

const REASONS: &[&str] = &[
    "missing_header",
    "malformed_header",
    "no_v1_signature",
    "timestamp_too_old",
    "timestamp_in_future",
    "mismatch",
];

/// The secrets a case configures: the list's entries, or one default when the
/// list does not parse (after checking why it did not).
fn configured_secrets(list: &str) -> Vec<String> {
    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
    match WebhookSecrets::parse(list) {
        Ok(parsed) => {
            assert_eq!(parsed.len(), entries.len());
            assert!(entries.iter().all(|e| !e.is_empty()));
            entries.into_iter().map(str::to_string).collect()
        }
        Err(_) => {
            assert!(list.trim().is_empty() || entries.iter().any(|e| e.is_empty()));
            vec![DEFAULT_SECRET.to_string()]
        }
    }
}

/// What verify answers for a header that parses, worked out independently: the
/// timestamp window, then an HMAC of `"<t as sent>.<body>"` per secret.
fn check_parsed(
    parsed: &SignatureHeader<'_>,
    case: &Case<'_>,
    secrets: &[String],
    verdict: Result<(), SignatureError>,
) {
    assert!((1..=MAX_SIGNATURES).contains(&parsed.signatures().len()));
    assert!((0..TIMESTAMP_LIMIT).contains(&parsed.timestamp()));
    assert_eq!(parsed.signed_timestamp().parse(), Ok(parsed.timestamp()));
    let tolerance = i64::try_from(case.tolerance).unwrap_or(i64::MAX);
    let age = case.now.saturating_sub(parsed.timestamp());
    let expected = if age > tolerance {
        Err(SignatureError::TimestampTooOld)
    } else if age < -tolerance {
        Err(SignatureError::TimestampInFuture)
    } else if secrets.iter().any(|secret| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(parsed.signed_timestamp().as_bytes());
        mac.update(b".");
        mac.update(case.body);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        parsed.signatures().contains(&expected)
    }) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    };
    assert_eq!(verdict, expected, "{case:?}");
}

/// A header we sign verifies, for every configured secret, at any tolerance; the
/// same header does not verify another body, nor once it is too old.
fn check_signing(list: &WebhookSecrets, secrets: &[String], case: &Case<'_>) {
    let at = case.now.clamp(0, TIMESTAMP_LIMIT - 1);
    for secret in secrets.iter().take(2) {
        let secret = SigningSecret::new(secret.as_str());
        let header = signature::sign_header(&secret, at, case.body);
        let v1 = signature::compute_v1(&secret, at, case.body);
        assert_eq!(header, format!("t={at},v1={v1}"));
        assert!(v1.len() == 64 && v1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_eq!(list.verify(&header, case.body, at, case.tolerance), Ok(()));
        let mut other_body = case.body.to_vec();
        other_body.push(b' ');
        assert_eq!(
            list.verify(&header, &other_body, at, case.tolerance),
            Err(SignatureError::Mismatch)
        );
        if let Some(later) = i64::try_from(case.tolerance)
            .ok()
            .and_then(|t| at.checked_add(t)?.checked_add(1))
        {
            assert_eq!(
                list.verify(&header, case.body, later, case.tolerance),
                Err(SignatureError::TimestampTooOld)
            );
        }
        // While Stripe rolls a secret, the header carries a signature by the old one too.
        let rolled = format!("{header},v1={}", "0".repeat(64));
        assert_eq!(list.verify(&rolled, case.body, at, case.tolerance), Ok(()));
    }
}
