//! Dialogflow authenticates to a webhook with HTTP basic auth and/or custom
//! headers (both editions). Either configured method admits a request; anything
//! else is refused. Comparisons run over SHA-256 digests in constant time, so
//! neither the secret's contents nor its length leak through timing.

use actix_web::http::header::{AUTHORIZATION, HeaderMap};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Authenticator {
    /// Digest of `user:password`.
    basic: Option<[u8; 32]>,
    /// Lowercase header name and the digest of its value.
    header: Option<(String, [u8; 32])>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

impl Authenticator {
    pub fn new(basic: Option<&(String, String)>, header: Option<&(String, String)>) -> Self {
        Self {
            basic: basic.map(|(user, password)| digest(format!("{user}:{password}").as_bytes())),
            header: header
                .map(|(name, token)| (name.to_ascii_lowercase(), digest(token.as_bytes()))),
        }
    }

    /// Whether basic auth is configured (the 401 then names the Basic scheme).
    pub fn offers_basic(&self) -> bool {
        self.basic.is_some()
    }

    pub fn admits(&self, headers: &HeaderMap) -> bool {
        // Evaluate both so the answer's timing does not say which one matched.
        let basic = self.basic.as_ref().is_some_and(|expected| {
            basic_credentials(headers).is_some_and(|given| same(expected, &digest(&given)))
        });
        let header = self.header.as_ref().is_some_and(|(name, expected)| {
            headers
                .get(name.as_str())
                .is_some_and(|value| same(expected, &digest(value.as_bytes())))
        });
        basic | header
    }
}

/// The decoded `user:password` of an `Authorization: Basic ...` header.
fn basic_credentials(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::try_from(*name).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn either_configured_method_admits() {
        let auth = Authenticator::new(
            Some(&("df".into(), "password-12345".into())),
            Some(&("X-Token".into(), "token-0123456789abcdef".into())),
        );
        assert!(auth.admits(&headers(&[(
            "authorization",
            &basic("df", "password-12345")
        )])));
        assert!(auth.admits(&headers(&[(
            "authorization",
            &basic("df", "password-12345").replace("Basic", "basic")
        )])));
        assert!(auth.admits(&headers(&[("x-token", "token-0123456789abcdef")])));
        for refused in [
            headers(&[]),
            headers(&[("authorization", &basic("df", "password-1234"))]),
            headers(&[("authorization", &basic("other", "password-12345"))]),
            headers(&[("authorization", "Bearer token-0123456789abcdef")]),
            headers(&[("authorization", "Basic not-base64!")]),
            headers(&[("x-token", "token-0123456789abcde")]),
            headers(&[("x-other", "token-0123456789abcdef")]),
        ] {
            assert!(!auth.admits(&refused), "{refused:?}");
        }
    }

    #[test]
    fn an_unconfigured_method_admits_nothing() {
        let auth = Authenticator::new(
            None,
            Some(&("x-token".into(), "token-0123456789abcdef".into())),
        );
        assert!(!auth.offers_basic());
        assert!(!auth.admits(&headers(&[("authorization", &basic("", ""))])));
    }
}
