//! Request bodies and pages, with the API's own error bodies (actix's built-in
//! extractors answer in plain text).

use actix_web::HttpRequest;
use actix_web::http::header;
use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::errors::ApiError;

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Reads a JSON body of at most [`BODY_LIMIT`] bytes. An empty body reads as `{}` (so
/// endpoints whose fields are all optional need none).
pub async fn read_json<T: DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
) -> Result<T, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > BODY_LIMIT) {
        return Err(ApiError::BodyTooLarge(BODY_LIMIT));
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(ApiError::BodyTooLarge(BODY_LIMIT));
        }
        body.extend_from_slice(&chunk);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return serde_json::from_slice(b"{}").map_err(|e| ApiError::invalid(format!("body: {e}")));
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("body: {e}")))
}

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 20;
/// Largest page.
pub const MAX_LIMIT: u32 = 100;

/// `?limit=&cursor=` (and a service caller's `user_id`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    pub user_id: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> Result<u32, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::invalid(format!(
                "`limit` must be between 1 and {MAX_LIMIT}"
            ))),
        }
    }
}

/// One page of a list, newest first unless the list says otherwise.
#[derive(Debug, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// From up to `limit + 1` rows: the extra one only says there is more.
    pub fn from_rows(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> String) -> Self {
        let has_more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = if has_more {
            rows.last().map(cursor_of)
        } else {
            None
        };
        Self {
            data: rows,
            has_more,
            next_cursor,
        }
    }
}

/// Splits a `<number>_<id>` cursor.
pub fn split_cursor(cursor: &str) -> Result<(i64, &str), ApiError> {
    let bad = || ApiError::invalid("`cursor` is not one this API returned");
    let (number, id) = cursor.split_once('_').ok_or_else(bad)?;
    let number: i64 = number.parse().map_err(|_| bad())?;
    if id.is_empty() || id.len() > 255 {
        return Err(bad());
    }
    Ok((number, id))
}

/// An `Idempotency-Key` header: the caller's own retry key for a POST.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| {
                    !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())
                })
                .ok_or_else(|| {
                    ApiError::invalid("`Idempotency-Key` must be 1 to 255 visible ASCII characters")
                })?;
            Ok(Some(key.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_cursors() {
        let page = Page::from_rows(vec![1, 2, 3], 2, |n| format!("{n}_x"));
        assert_eq!(page.data, [1, 2]);
        assert!(page.has_more);
        assert_eq!(page.next_cursor.as_deref(), Some("2_x"));
        let last = Page::from_rows(vec![1], 2, |n| format!("{n}_x"));
        assert!(!last.has_more && last.next_cursor.is_none());
        assert_eq!(split_cursor("170_in_1").unwrap(), (170, "in_1"));
        for bad in ["", "x_1", "12", "12_"] {
            assert!(split_cursor(bad).is_err(), "{bad}");
        }
        let query = |limit| PageQuery {
            limit,
            cursor: None,
            user_id: None,
        };
        assert_eq!(query(None).limit().unwrap(), DEFAULT_LIMIT);
        assert!(query(Some(0)).limit().is_err());
        assert!(query(Some(101)).limit().is_err());
    }
}
