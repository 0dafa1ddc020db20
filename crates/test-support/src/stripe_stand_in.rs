//! A local stand-in for the Stripe API: a real HTTP/1.1 server on a random loopback port
//! that a service reaches through `STRIPE_API_BASE`.
//!
//! It answers the routes a test sets (`GET /v1/subscriptions/{id}` from
//! [`StripeStandIn::put_object`], anything else from [`StripeStandIn::reply`], including
//! POSTs; one-off answers first from [`StripeStandIn::reply_once`]), serves list endpoints
//! (`GET /v1/events`, `/v1/customers`, `/v1/subscriptions`) with Stripe's pagination from
//! [`StripeStandIn::put_list`], answers 404 with Stripe's `resource_missing` error for the
//! rest, and records every request (method, path, query, headers, body) so a test can assert
//! authentication, the `Stripe-Version`, an `Idempotency-Key`, a form body, a query, and how
//! many calls were made.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Without the query (`/v1/subscriptions/sub_1`).
    pub path: String,
    pub query: Option<String>,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of a header (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as `application/x-www-form-urlencoded` pairs, decoded, in order
    /// (Stripe's nested parameters keep their `a[b][0]` names).
    pub fn form(&self) -> Vec<(String, String)> {
        form_pairs(&String::from_utf8_lossy(&self.body))
    }

    /// The first value of a form field.
    pub fn form_value(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The query string as decoded pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query.as_deref().map(form_pairs).unwrap_or_default()
    }

    /// The first value of a query parameter.
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

/// What a route answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Held this long before answering (to test timeouts and single-flight).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: &Value) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(body).expect("JSON"),
            delay: Duration::ZERO,
        }
    }

    /// 200 with the object.
    pub fn object(object: &Value) -> Self {
        Self::json(200, object)
    }

    /// An error in Stripe's shape: `{"error": {"type", "code", "message"}}`.
    pub fn stripe_error(status: u16, error_type: &str, code: Option<&str>, message: &str) -> Self {
        Self::json(
            status,
            &json!({ "error": { "type": error_type, "code": code, "message": message } }),
        )
    }

    /// 404 `resource_missing`, as Stripe answers for an unknown id.
    pub fn not_found(path: &str) -> Self {
        Self::stripe_error(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            &format!("No such resource: '{path}'"),
        )
    }

    /// 429, as Stripe answers over its rate limit.
    pub fn rate_limited() -> Self {
        Self::stripe_error(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly.",
        )
    }

    /// 500 with Stripe's `api_error` body.
    pub fn server_error() -> Self {
        Self::stripe_error(
            500,
            "api_error",
            None,
            "Something went wrong on Stripe's end.",
        )
    }

    /// A non-JSON body (what a proxy in front of an API answers).
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/html",
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
struct State {
    /// (method, path) → reply.
    routes: Mutex<HashMap<(String, String), Reply>>,
    /// (method, path) → replies used once each, before `routes` and lists.
    once: Mutex<HashMap<(String, String), VecDeque<Reply>>>,
    /// collection (`events`) → objects, newest first.
    lists: Mutex<HashMap<String, Vec<Value>>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

pub struct StripeStandIn {
    addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl StripeStandIn {
    /// Listens on a fresh loopback port until dropped.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the Stripe stand-in");
        let addr = listener.local_addr().expect("stand-in address");
        let state = Arc::new(State::default());
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), request));
                    // A client hanging up early (a timeout) is not an error here.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            server,
        }
    }

    /// The `STRIPE_API_BASE` that reaches this stand-in (`http://127.0.0.1:PORT/`).
    pub fn api_base(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves `GET /v1/{collection}/{object.id}` with `object` (replacing what was there).
    pub fn put_object(&self, collection: &str, object: &Value) {
        let id = object["id"].as_str().expect("the object has an id");
        self.reply(
            "GET",
            &format!("/v1/{collection}/{id}"),
            Reply::object(object),
        );
    }

    /// Answers `method path` with `reply` from now on (replacing what was there).
    pub fn reply(&self, method: &str, path: &str, reply: Reply) {
        lock(&self.state.routes).insert((method.to_ascii_uppercase(), path.to_string()), reply);
    }

    /// Answers the next request to `method path` with `reply`, once (several calls queue
    /// up in order); routes and lists answer again afterwards.
    pub fn reply_once(&self, method: &str, path: &str, reply: Reply) {
        lock(&self.state.once)
            .entry((method.to_ascii_uppercase(), path.to_string()))
            .or_default()
            .push_back(reply);
    }

    /// Serves `GET /v1/{collection}` as Stripe does, from `objects` (replacing what was
    /// there): newest `created` first (objects of the same second in the given order),
    /// `limit` (default 10, at most 100), `starting_after` (the page just older) and
    /// `ending_before` (the page just newer), `has_more`; events filtered by `types[]` or
    /// `type` (`invoice.*` wildcards too), subscriptions by `status` (without it, canceled
    /// ones are left out, as Stripe does; `all` lists every status). Each object is also
    /// served by id (`GET /v1/{collection}/{id}`) unless a route says otherwise.
    pub fn put_list(&self, collection: &str, mut objects: Vec<Value>) {
        objects.sort_by_key(|o| std::cmp::Reverse(o["created"].as_i64().unwrap_or(0)));
        lock(&self.state.lists).insert(collection.to_string(), objects);
    }

    /// Adds `object` to the list of `collection`, as the newest of its second.
    pub fn push_to_list(&self, collection: &str, object: Value) {
        let mut lists = lock(&self.state.lists);
        let list = lists.entry(collection.to_string()).or_default();
        let created = object["created"].as_i64().unwrap_or(0);
        let at = list
            .iter()
            .position(|o| o["created"].as_i64().unwrap_or(0) <= created)
            .unwrap_or(list.len());
        list.insert(at, object);
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// The requests so far for `method path`.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .collect()
    }
}

impl Drop for StripeStandIn {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let recorded = RecordedRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let key = (recorded.method.clone(), recorded.path.clone());
    let once = lock(&state.once)
        .get_mut(&key)
        .and_then(VecDeque::pop_front);
    let reply = once
        .or_else(|| lock(&state.routes).get(&key).cloned())
        .or_else(|| list_reply(&state, &recorded))
        .unwrap_or_else(|| Reply::not_found(&recorded.path));
    lock(&state.requests).push(recorded);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let response = Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .header("request-id", "req_stand_in")
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a valid response");
    Ok(response)
}

/// A list page or a listed object, for `GET /v1/{collection}[/{id}]`.
fn list_reply(state: &State, request: &RecordedRequest) -> Option<Reply> {
    if request.method != "GET" {
        return None;
    }
    let rest = request.path.strip_prefix("/v1/")?;
    let lists = lock(&state.lists);
    if let Some((collection, id)) = rest.split_once('/') {
        let object = lists.get(collection)?.iter().find(|o| o["id"] == id)?;
        return Some(Reply::object(object));
    }
    let objects = lists.get(rest)?;
    let query = request.query_pairs();
    let param = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let types: Vec<&str> = query
        .iter()
        .filter(|(n, _)| n.starts_with("types["))
        .map(|(_, v)| v.as_str())
        .chain(param("type"))
        .collect();
    let type_matches = |t: &str| {
        types.is_empty()
            || types.iter().any(|want| match want.strip_suffix('*') {
                Some(prefix) => t.starts_with(prefix),
                None => t == *want,
            })
    };
    let status = param("status");
    let status_matches = |s: &str| match status {
        None => s != "canceled",
        Some("all") => true,
        Some(want) => s == want,
    };
    let listed: Vec<&Value> = objects
        .iter()
        .filter(|o| o["type"].as_str().is_none_or(type_matches))
        .filter(|o| rest != "subscriptions" || o["status"].as_str().is_some_and(status_matches))
        .collect();
    let limit = param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let position = |cursor: &str| listed.iter().position(|o| o["id"] == cursor);
    let missing = |name: &str, cursor: &str| {
        Reply::json(
            400,
            &json!({ "error": { "type": "invalid_request_error", "code": "resource_missing",
                "param": name, "message": format!("No such object: '{cursor}'") } }),
        )
    };
    let (page, has_more): (&[&Value], bool) =
        match (param("starting_after"), param("ending_before")) {
            (Some(_), Some(_)) => {
                return Some(Reply::stripe_error(
                    400,
                    "invalid_request_error",
                    None,
                    "Received both starting_after and ending_before parameters.",
                ));
            }
            (Some(cursor), None) => {
                let Some(at) = position(cursor) else {
                    return Some(missing("starting_after", cursor));
                };
                let older = &listed[at + 1..];
                (&older[..older.len().min(limit)], older.len() > limit)
            }
            (None, Some(cursor)) => {
                let Some(at) = position(cursor) else {
                    return Some(missing("ending_before", cursor));
                };
                let start = at.saturating_sub(limit);
                (&listed[start..at], start > 0)
            }
            (None, None) => (&listed[..listed.len().min(limit)], listed.len() > limit),
        };
    Some(Reply::object(&json!({
        "object": "list",
        "url": format!("/v1/{rest}"),
        "has_more": has_more,
        "data": page,
    })))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `a=1&b%5B0%5D=x+y` → [("a", "1"), ("b[0]", "x y")].
fn form_pairs(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let hex = |b: u8| char::from(b).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push((high * 16 + low) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode_like_stripe_sends_them() {
        assert_eq!(
            form_pairs(
                "mode=subscription&line_items%5B0%5D%5Bprice%5D=price_1&success_url=https%3A%2F%2Fx.test%2Fok%3Fa%3D1&name=a+b"
            ),
            vec![
                ("mode".to_string(), "subscription".to_string()),
                ("line_items[0][price]".to_string(), "price_1".to_string()),
                (
                    "success_url".to_string(),
                    "https://x.test/ok?a=1".to_string()
                ),
                ("name".to_string(), "a b".to_string()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    fn get(state: &State, path_and_query: &str) -> Value {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let request = RecordedRequest {
            method: "GET".into(),
            path: path.into(),
            query: Some(query.into()),
            headers: Vec::new(),
            body: Vec::new(),
        };
        let reply = list_reply(state, &request).expect("a list route");
        serde_json::from_slice(&reply.body).unwrap()
    }

    fn ids(page: &Value) -> Vec<&str> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn lists_page_like_stripe_in_both_directions() {
        let state = State::default();
        // e1 oldest ... e5 newest; e6 is another type.
        let events: Vec<Value> = (1..=6)
            .map(|i| {
                let kind = if i == 6 {
                    "charge.succeeded"
                } else {
                    "invoice.paid"
                };
                json!({ "id": format!("e{i}"), "type": kind, "created": 100 + i })
            })
            .collect();
        lock(&state.lists).insert("events".into(), {
            let mut e = events;
            e.reverse();
            e
        });
        let first = get(&state, "/v1/events?limit=2&types[0]=invoice.*");
        assert_eq!(ids(&first), ["e5", "e4"]);
        assert_eq!(first["has_more"], true);
        let next = get(
            &state,
            "/v1/events?limit=2&types[0]=invoice.paid&starting_after=e4",
        );
        assert_eq!(ids(&next), ["e3", "e2"]);
        let last = get(
            &state,
            "/v1/events?limit=2&types[0]=invoice.paid&starting_after=e2",
        );
        assert_eq!((ids(&last), &last["has_more"]), (vec!["e1"], &json!(false)));
        // Forward from e1: the events just newer than it, still newest first.
        let newer = get(
            &state,
            "/v1/events?limit=2&types[0]=invoice.paid&ending_before=e1",
        );
        assert_eq!(ids(&newer), ["e3", "e2"]);
        assert_eq!(newer["has_more"], true);
        let newest = get(
            &state,
            "/v1/events?limit=2&types[0]=invoice.paid&ending_before=e3",
        );
        assert_eq!(
            (ids(&newest), &newest["has_more"]),
            (vec!["e5", "e4"], &json!(false))
        );
        assert_eq!(ids(&get(&state, "/v1/events?limit=100")).len(), 6);
        assert_eq!(
            get(&state, "/v1/events?ending_before=evt_gone")["error"]["code"],
            "resource_missing"
        );
        assert_eq!(get(&state, "/v1/events/e2")["id"], "e2");
    }

    #[test]
    fn subscriptions_leave_out_canceled_ones_unless_asked() {
        let state = State::default();
        lock(&state.lists).insert(
            "subscriptions".into(),
            vec![
                json!({ "id": "sub_2", "status": "canceled", "created": 2 }),
                json!({ "id": "sub_1", "status": "active", "created": 1 }),
            ],
        );
        assert_eq!(ids(&get(&state, "/v1/subscriptions")), ["sub_1"]);
        assert_eq!(
            ids(&get(&state, "/v1/subscriptions?status=all")),
            ["sub_2", "sub_1"]
        );
    }
}
