//! Who is calling, from an `Authorization: Bearer <token>` value: one of a set of
//! configured tokens (internal callers; their SHA-256 digests compared in constant time,
//! against every token, so neither a token's contents nor its length leak through timing),
//! or an end user's JWT (HS256 with a shared secret, or RS256 with a key from a JWKS URL,
//! cached). The services decide what each kind of caller may do; this crate only says
//! who the caller is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Unknown key ids trigger at most one JWKS fetch per this interval.
const JWKS_REFETCH: Duration = Duration::from_secs(30);
/// Known keys are refreshed this often (key rotation).
const JWKS_MAX_AGE: Duration = Duration::from_secs(600);

/// The token of an `authorization` header value (`Bearer <token>`), if it has one.
pub fn bearer_token(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// A set of secret tokens, compared in constant time. Only their SHA-256 digests are
/// kept and compared: comparing the tokens themselves would return early on a length
/// mismatch and so tell a guesser how long the tokens are.
#[derive(Clone, Default)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.digests.len())
    }
}

impl TokenSet {
    pub fn new<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Self {
        Self {
            digests: tokens.into_iter().map(|t| digest(t.as_ref())).collect(),
        }
    }

    /// The index of the matching token. Every token is compared, without stopping at
    /// the first match, so the time taken says nothing about which (if any) matched.
    pub fn position(&self, token: &str) -> Option<usize> {
        let given = digest(token);
        let mut found = None;
        for (i, known) in self.digests.iter().enumerate() {
            if bool::from(known.ct_eq(&given)) {
                found = Some(i);
            }
        }
        found
    }

    pub fn contains(&self, token: &str) -> bool {
        self.position(token).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// How end-user JWTs are verified.
#[derive(Clone, Default)]
pub struct JwtSettings {
    /// HS256 tokens are signed with this secret.
    pub hs256_secret: Option<String>,
    /// RS256 tokens are verified with the keys this URL serves (a JWKS).
    pub jwks_url: Option<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// An end user, as their verified token names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserClaims {
    /// `sub`.
    pub user_id: String,
    /// Lower-cased; only when the token says it is verified (or does not say otherwise).
    pub email: Option<String>,
}

/// The token is not one this verifier accepts (bad signature, expired, wrong issuer or
/// audience, unknown key, an algorithm other than HS256/RS256, or no `sub`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken;

/// Verifies end-user JWTs.
pub struct JwtVerifier {
    hs256: Option<DecodingKey>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    email: Option<String>,
    email_verified: Option<bool>,
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    keys: RwLock<HashMap<String, DecodingKey>>,
    fetched: Mutex<Option<Instant>>,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Self {
        Self {
            hs256: settings
                .hs256_secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: settings.jwks_url.as_ref().map(|url| Jwks {
                url: url.clone(),
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .expect("an HTTP client with default settings builds"),
                keys: RwLock::new(HashMap::new()),
                fetched: Mutex::new(None),
            }),
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        }
    }

    /// Whether any kind of user token can be accepted at all.
    pub fn is_configured(&self) -> bool {
        self.hs256.is_some() || self.jwks.is_some()
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        // A token issued for later (`nbf`) is not valid yet; jsonwebtoken skips the check
        // unless asked.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        validation
    }

    pub async fn verify(&self, token: &str) -> Result<UserClaims, InvalidToken> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| InvalidToken)?;
        let claims: Claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.hs256.as_ref().ok_or(InvalidToken)?;
                jsonwebtoken::decode(token, key, &self.validation(Algorithm::HS256))
                    .map_err(|_| InvalidToken)?
                    .claims
            }
            Algorithm::RS256 => {
                let jwks = self.jwks.as_ref().ok_or(InvalidToken)?;
                let kid = header.kid.ok_or(InvalidToken)?;
                let key = jwks.key(&kid).await.ok_or(InvalidToken)?;
                jsonwebtoken::decode(token, &key, &self.validation(Algorithm::RS256))
                    .map_err(|_| InvalidToken)?
                    .claims
            }
            _ => return Err(InvalidToken),
        };
        if claims.sub.is_empty() {
            return Err(InvalidToken);
        }
        Ok(UserClaims {
            user_id: claims.sub,
            email: claims
                .email
                .filter(|_| claims.email_verified != Some(false))
                .map(|e| e.to_lowercase()),
        })
    }
}

impl Jwks {
    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        let stale = self
            .fetched
            .lock()
            .is_none_or(|at| at.elapsed() > JWKS_MAX_AGE);
        if !stale && let Some(key) = self.keys.read().get(kid) {
            return Some(key.clone());
        }
        let may_fetch = {
            let mut fetched = self.fetched.lock();
            let allowed = fetched.is_none_or(|at| at.elapsed() > JWKS_REFETCH) || stale;
            if allowed {
                *fetched = Some(Instant::now());
            }
            allowed
        };
        if may_fetch {
            match self.fetch().await {
                Ok(keys) => *self.keys.write() = keys,
                Err(e) => {
                    tracing::warn!(error = %e, url = %self.url, "cannot fetch the JWKS; keeping known keys")
                }
            }
        }
        self.keys.read().get(kid).cloned()
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, DecodingKey>> {
        let set: JwkSet = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            if let Some(kid) = &jwk.common.key_id
                && let Ok(key) = DecodingKey::from_jwk(jwk)
            {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    #[test]
    fn bearer_tokens_and_token_sets() {
        assert_eq!(bearer_token("Bearer abc "), Some("abc"));
        assert_eq!(bearer_token("bearer abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer  "), None);
        let set = TokenSet::new(["first-token-0123456", "second-token-012345"]);
        assert_eq!(set.position("second-token-012345"), Some(1));
        assert!(set.contains("first-token-0123456"));
        assert!(!set.contains("first-token-012345"));
        assert!(!TokenSet::default().contains(""));
        assert!(!format!("{set:?}").contains("first"));
    }

    fn hs256(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn hs256_tokens_are_checked_for_signature_expiry_issuer_and_audience() {
        let secret = "a-secret-of-at-least-thirty-two-bytes!!";
        let verifier = JwtVerifier::new(&JwtSettings {
            hs256_secret: Some(secret.into()),
            issuer: Some("https://id.test".into()),
            audience: Some("tollgate".into()),
            ..JwtSettings::default()
        });
        assert!(verifier.is_configured());
        let exp = 4_102_444_800_u64; // 2100-01-01
        let good = json!({"sub": "u1", "email": "U1@Example.test", "exp": exp,
                          "iss": "https://id.test", "aud": "tollgate"});
        assert_eq!(
            verifier.verify(&hs256(good.clone(), secret)).await,
            Ok(UserClaims {
                user_id: "u1".into(),
                email: Some("u1@example.test".into())
            })
        );
        let mut unverified = good.clone();
        unverified["email_verified"] = false.into();
        assert_eq!(
            verifier
                .verify(&hs256(unverified, secret))
                .await
                .unwrap()
                .email,
            None
        );
        let mut expired = good.clone();
        expired["exp"] = 1_000_000.into();
        let mut other_issuer = good.clone();
        other_issuer["iss"] = "https://evil.test".into();
        let mut other_audience = good.clone();
        other_audience["aud"] = "someone-else".into();
        let mut no_sub = good.clone();
        no_sub["sub"] = "".into();
        let mut not_yet = good.clone();
        not_yet["nbf"] = (exp - 3600).into();
        for token in [
            hs256(good.clone(), "another-secret-of-thirty-two-bytes!!!"),
            hs256(expired, secret),
            hs256(other_issuer, secret),
            hs256(other_audience, secret),
            hs256(no_sub, secret),
            hs256(not_yet, secret),
            "not.a.jwt".to_string(),
        ] {
            assert_eq!(verifier.verify(&token).await, Err(InvalidToken), "{token}");
        }
        // RS256 without a JWKS URL is refused rather than tried.
        let unconfigured = JwtVerifier::new(&JwtSettings::default());
        assert!(!unconfigured.is_configured());
        assert_eq!(
            unconfigured.verify(&hs256(good, secret)).await,
            Err(InvalidToken)
        );
    }
}
