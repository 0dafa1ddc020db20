//! Reading an HTTP request body whole under a size limit, for the services that
//! verify a signature over the raw bytes (ingest, fulfillment).

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body could not be read: {0}")]
    Read(String),
}

/// Reads `chunks` into one buffer, refusing a body over `limit` bytes without
/// buffering it: at once when the declared `Content-Length` is over, else as soon
/// as the bytes read pass it (a chunked or lying client).
pub async fn read_limited<S, E>(
    declared_length: Option<&str>,
    mut chunks: S,
    limit: usize,
) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let declared = declared_length.and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(8 * 1024));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

#[cfg(test)]
mod tests {
    use futures_util::stream;

    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole_from_its_chunks() {
        let body = read_limited(Some("10"), chunks(&[b"hello", b"world"]), 10).await;
        assert_eq!(body.unwrap(), Bytes::from_static(b"helloworld"));
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        // The stream would fail if it were read: the refusal comes first.
        let unread = stream::iter([Err::<Bytes, _>("must not be read".to_string())]);
        let refused = read_limited(Some("11"), unread, 10).await;
        assert_eq!(refused, Err(BodyError::TooLarge { limit: 10 }));
    }

    #[tokio::test]
    async fn bytes_beyond_the_limit_are_refused_whatever_the_length_declared() {
        for declared in [None, Some("4"), Some("not a number")] {
            let refused = read_limited(declared, chunks(&[b"hello", b"world!"]), 10).await;
            assert_eq!(
                refused,
                Err(BodyError::TooLarge { limit: 10 }),
                "{declared:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_read_says_why() {
        let failing = stream::iter([
            Ok(Bytes::from_static(b"he")),
            Err("connection reset".to_string()),
        ]);
        let failed = read_limited(None, failing, 10).await;
        assert_eq!(failed, Err(BodyError::Read("connection reset".into())));
    }
}
