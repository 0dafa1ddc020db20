//! Typed reading of environment variables, with errors that name the variable.
//!
//! Each service builds its own `Config` from an [`Env`]; tests build an `Env`
//! from a map instead of mutating the process environment.

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {name} is required but not set")]
    Missing { name: &'static str },
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl ConfigError {
    pub fn invalid(name: &'static str, reason: impl Display) -> Self {
        Self::Invalid {
            name,
            reason: reason.to_string(),
        }
    }
}

/// A source of configuration values: the process environment, or a map in tests.
#[derive(Debug, Clone, Default)]
pub struct Env {
    overrides: Option<HashMap<String, String>>,
}

impl Env {
    /// Reads the real process environment.
    pub fn process() -> Self {
        Self { overrides: None }
    }

    /// Reads only the given pairs (tests).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            overrides: Some(
                pairs
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            ),
        }
    }

    /// The raw value, with empty strings treated as unset.
    pub fn raw(&self, name: &str) -> Option<String> {
        let value = match &self.overrides {
            Some(map) => map.get(name).cloned(),
            None => std::env::var(name).ok(),
        };
        value.filter(|v| !v.trim().is_empty())
    }

    /// A comma-separated list, entries trimmed, empty ones dropped; unset is empty.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.raw(name)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn required_string(&self, name: &'static str) -> Result<String, ConfigError> {
        self.raw(name).ok_or(ConfigError::Missing { name })
    }

    pub fn required<T>(&self, name: &'static str) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        parse(name, &self.required_string(name)?)
    }

    pub fn optional<T>(&self, name: &'static str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.raw(name).map(|v| parse(name, &v)).transpose()
    }

    pub fn or<T>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// Booleans accept true/false, 1/0, yes/no, on/off (any case).
    pub fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::invalid(
                    name,
                    format!("`{v}` is not a boolean"),
                )),
            },
        }
    }
}

fn parse<T>(name: &'static str, value: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| ConfigError::invalid(name, e))
}

/// A URL with credentials, printed without them.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://<redacted>@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn names_the_missing_and_the_invalid_variable() {
        let env = Env::from_pairs([("PORT", "eighty"), ("EMPTY", "  ")]);
        assert_eq!(
            env.required::<u16>("NOPE").unwrap_err().to_string(),
            "environment variable NOPE is required but not set"
        );
        let err = env.required::<u16>("PORT").unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable PORT is invalid"),
            "{err}"
        );
        assert_eq!(
            env.required_string("EMPTY"),
            Err(ConfigError::Missing { name: "EMPTY" })
        );
    }

    #[test]
    fn defaults_and_flags() {
        let env = Env::from_pairs([("ADDR", "0.0.0.0:9000"), ("LIVE", "Yes"), ("BAD", "maybe")]);
        let default: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(env.or("ADDR", default).unwrap().port(), 9000);
        assert_eq!(env.or("MISSING_ADDR", default).unwrap(), default);
        assert!(env.flag("LIVE", false).unwrap());
        assert!(!env.flag("UNSET", false).unwrap());
        assert!(env.flag("BAD", false).is_err());
    }

    #[test]
    fn urls_lose_their_credentials_when_printed() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@rabbit:5672/%2f"),
            "amqp://<redacted>@rabbit:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}
