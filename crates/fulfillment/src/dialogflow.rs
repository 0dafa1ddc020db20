//! Dialogflow's webhook formats, ES (`google.cloud.dialogflow.v2.WebhookRequest` /
//! `WebhookResponse`) and CX (`google.cloud.dialogflow.cx.v3.WebhookRequest` /
//! `WebhookResponse`), in their proto3 JSON mapping: camelCase names, `Struct`
//! parameters (every number a double), and `null` allowed wherever a field may be
//! absent. Only the fields fulfillment reads are declared; the rest is ignored, as
//! Google asks of webhooks ("you may see undocumented fields").

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Which Dialogflow edition sent the request (and so the answer's format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Es,
    Cx,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::Es => "es",
            Flavor::Cx => "cx",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    Json(serde_json::Error),
    #[error("neither a Dialogflow ES nor a Dialogflow CX webhook request")]
    Unrecognized,
    #[error("not a valid Dialogflow {flavor} webhook request: {source}", flavor = match .flavor { Flavor::Es => "ES", Flavor::Cx => "CX" })]
    Invalid {
        flavor: Flavor,
        source: serde_json::Error,
    },
}

/// proto3 JSON: `null` means the field's default.
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

// ---- ES (v2) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EsRequest {
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    response_id: String,
    query_result: EsQueryResult,
    #[serde(default, deserialize_with = "nullable")]
    original_detect_intent_request: EsOriginalRequest,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EsQueryResult {
    #[serde(default, deserialize_with = "nullable")]
    action: String,
    #[serde(default, deserialize_with = "nullable")]
    parameters: Map<String, Value>,
    #[serde(default, deserialize_with = "nullable")]
    intent: EsIntent,
    /// Kept whole: contexts are echoed back with ours (see `render`).
    #[serde(default, deserialize_with = "nullable")]
    output_contexts: Vec<Map<String, Value>>,
    #[serde(default, deserialize_with = "nullable")]
    language_code: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EsIntent {
    #[serde(default, deserialize_with = "nullable")]
    display_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EsOriginalRequest {
    #[serde(default, deserialize_with = "nullable")]
    source: String,
    #[serde(default, deserialize_with = "nullable")]
    payload: Map<String, Value>,
}

// ---- CX (v3) ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CxRequest {
    #[serde(default, deserialize_with = "nullable")]
    detect_intent_response_id: String,
    #[serde(default, deserialize_with = "nullable")]
    fulfillment_info: CxFulfillmentInfo,
    #[serde(default, deserialize_with = "nullable")]
    intent_info: CxIntentInfo,
    #[serde(default, deserialize_with = "nullable")]
    session_info: CxSessionInfo,
    #[serde(default, deserialize_with = "nullable")]
    language_code: String,
    #[serde(default, deserialize_with = "nullable")]
    payload: Map<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
struct CxFulfillmentInfo {
    #[serde(default, deserialize_with = "nullable")]
    tag: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CxIntentInfo {
    #[serde(default, deserialize_with = "nullable")]
    display_name: String,
}

#[derive(Debug, Default, Deserialize)]
struct CxSessionInfo {
    #[serde(default, deserialize_with = "nullable")]
    session: String,
    #[serde(default, deserialize_with = "nullable")]
    parameters: Map<String, Value>,
}

/// Who the user is, as the request names them.
#[derive(Clone, PartialEq, Eq)]
pub enum UserRef {
    UserId(String),
    Email(String),
}

impl UserRef {
    /// The subject entitlements understands, with an explicit prefix so an id
    /// containing `@` is never read as an email.
    pub fn subject(&self) -> String {
        match self {
            UserRef::UserId(id) => format!("user:{id}"),
            UserRef::Email(email) => format!("email:{email}"),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            UserRef::UserId(_) => "user_id",
            UserRef::Email(_) => "email",
        }
    }
}

// Emails never reach logs, even through a Debug print.
impl std::fmt::Debug for UserRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserRef::UserId(id) => write!(f, "UserId({id})"),
            UserRef::Email(_) => f.write_str("Email(<redacted>)"),
        }
    }
}

/// One conversational turn, whichever edition sent it.
pub struct Turn {
    pub flavor: Flavor,
    /// The full session name (`projects/.../sessions/<id>`).
    pub session: String,
    /// The response id (ES `responseId`, CX `detectIntentResponseId`).
    pub response_id: String,
    /// What names the answer, in order: ES action then intent display name; the CX
    /// tag (the matched intent's display name only when there is no tag).
    pub names: Vec<String>,
    pub user: Option<UserRef>,
    /// The turn's parameters (ES `queryResult.parameters`, CX `sessionInfo.parameters`).
    pub parameters: Map<String, Value>,
    /// ES `queryResult.languageCode`, CX `languageCode` (answers are in English).
    pub language_code: String,
    /// ES `originalDetectIntentRequest.source` (e.g. `telephony`), empty for CX.
    pub source: String,
    /// ES: the active contexts other than ours, as received.
    pub contexts: Vec<Value>,
}

// Parameters and contexts hold what the user typed (an email, say): a Debug print
// names the parameters and counts the contexts, never shows their values.
impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turn")
            .field("flavor", &self.flavor)
            .field("session", &self.session)
            .field("response_id", &self.response_id)
            .field("names", &self.names)
            .field("user", &self.user)
            .field("parameters", &self.parameters.keys().collect::<Vec<_>>())
            .field("language_code", &self.language_code)
            .field("source", &self.source)
            .field("contexts", &self.contexts.len())
            .finish()
    }
}

impl Turn {
    /// The session id: the last segment of the session name (for logs).
    pub fn session_id(&self) -> &str {
        self.session.rsplit('/').next().unwrap_or_default()
    }

    /// The name the turn was matched by, for logs: the first non-empty candidate.
    pub fn label(&self) -> &str {
        self.names
            .iter()
            .find(|n| !n.is_empty())
            .map_or("", String::as_str)
    }

    /// A string parameter (Dialogflow sends entity lists as arrays: the first counts).
    pub fn string_parameter(&self, name: &str) -> Option<String> {
        match self.parameters.get(name)? {
            Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Value::Array(items) => items.iter().find_map(|v| match v {
                Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                _ => None,
            }),
            _ => None,
        }
    }

    /// A whole-number parameter. `Struct` numbers are doubles (`500.0`); a numeric
    /// string is taken too, since a @sys.number-integer can arrive either way.
    pub fn count_parameter(&self, name: &str) -> Option<u64> {
        match self.parameters.get(name)? {
            Value::Number(n) => n.as_f64().and_then(whole),
            Value::String(s) => s.trim().parse::<f64>().ok().and_then(whole),
            _ => None,
        }
    }
}

/// A double that is a non-negative whole number, as an integer.
fn whole(value: f64) -> Option<u64> {
    (value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value < 9.0e15)
        .then_some(value as u64)
}

/// A user id from a `Struct` value: a non-empty string, or a whole number (`42.0`).
/// Longest user id or email taken (entitlements refuses subjects over 320 bytes).
const MAX_USER_LEN: usize = 254;

fn plausible(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_USER_LEN && !s.chars().any(char::is_control)
}

fn user_id(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if plausible(s.trim()) => Some(s.trim().to_string()),
        Value::Number(n) => n.as_f64().and_then(whole).map(|n| n.to_string()),
        _ => None,
    }
}

/// An address shaped like `local@domain.tld`; anything else is not a user.
fn email(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => {
            let s = s.trim();
            let (local, domain) = s.split_once('@')?;
            (plausible(s)
                && !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.'))
            .then(|| s.to_string())
        }
        Value::Array(items) => items.iter().find_map(email),
        _ => None,
    }
}

/// `user_id` / `userId` before `email`, in one map.
fn user_in(map: &Map<String, Value>) -> Option<UserRef> {
    ["user_id", "userId"]
        .iter()
        .find_map(|key| map.get(*key).and_then(user_id))
        .map(UserRef::UserId)
        .or_else(|| map.get("email").and_then(email).map(UserRef::Email))
}

/// A payload names the user as `{"user": {"userId" | "user_id" | "email"}}` or at
/// its top level.
fn user_in_payload(payload: &Map<String, Value>) -> Option<UserRef> {
    payload
        .get("user")
        .and_then(Value::as_object)
        .and_then(user_in)
        .or_else(|| user_in(payload))
}

/// The message-typed fields fulfillment reads (JSON pointers). serde would also
/// accept a struct written as an array, which proto3 JSON never does.
const ES_MESSAGES: &[&str] = &[
    "/queryResult",
    "/queryResult/intent",
    "/originalDetectIntentRequest",
];
const CX_MESSAGES: &[&str] = &["/fulfillmentInfo", "/intentInfo", "/sessionInfo"];

fn messages_are_objects(
    value: &Value,
    flavor: Flavor,
    pointers: &[&str],
) -> Result<(), ParseError> {
    for pointer in pointers {
        match value.pointer(pointer) {
            None | Some(Value::Null | Value::Object(_)) => {}
            Some(_) => {
                let field = pointer.trim_start_matches('/').replace('/', ".");
                return Err(ParseError::Invalid {
                    flavor,
                    source: serde::de::Error::custom(format!("`{field}` must be an object")),
                });
            }
        }
    }
    Ok(())
}

/// Parses a webhook body, telling ES from CX by shape: ES requests carry
/// `queryResult`, CX requests `fulfillmentInfo` / `sessionInfo` /
/// `detectIntentResponseId`.
pub fn parse(body: &[u8]) -> Result<Turn, ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(ParseError::Json)?;
    let Value::Object(object) = &value else {
        return Err(ParseError::Unrecognized);
    };
    if object.contains_key("queryResult") {
        messages_are_objects(&value, Flavor::Es, ES_MESSAGES)?;
        let request: EsRequest =
            serde_json::from_value(value).map_err(|source| ParseError::Invalid {
                flavor: Flavor::Es,
                source,
            })?;
        return Ok(es_turn(request));
    }
    if ["fulfillmentInfo", "sessionInfo", "detectIntentResponseId"]
        .iter()
        .any(|key| object.contains_key(*key))
    {
        messages_are_objects(&value, Flavor::Cx, CX_MESSAGES)?;
        let request: CxRequest =
            serde_json::from_value(value).map_err(|source| ParseError::Invalid {
                flavor: Flavor::Cx,
                source,
            })?;
        return Ok(cx_turn(request));
    }
    Err(ParseError::Unrecognized)
}

fn es_turn(request: EsRequest) -> Turn {
    let query = request.query_result;
    // The app's own payload is the most trustworthy; then this turn's parameters;
    // then what earlier turns left in contexts (our own context carries user_id).
    let user = user_in_payload(&request.original_detect_intent_request.payload)
        .or_else(|| user_in(&query.parameters))
        .or_else(|| {
            query.output_contexts.iter().find_map(|context| {
                context
                    .get("parameters")
                    .and_then(Value::as_object)
                    .and_then(user_in)
            })
        });
    let own = format!("/contexts/{CONTEXT}");
    let contexts = query
        .output_contexts
        .into_iter()
        .filter(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.ends_with(&own))
        })
        .map(Value::Object)
        .collect();
    Turn {
        flavor: Flavor::Es,
        session: request.session,
        response_id: request.response_id,
        names: vec![query.action, query.intent.display_name],
        user,
        parameters: query.parameters,
        language_code: query.language_code,
        source: request.original_detect_intent_request.source,
        contexts,
    }
}

fn cx_turn(request: CxRequest) -> Turn {
    let user =
        user_in_payload(&request.payload).or_else(|| user_in(&request.session_info.parameters));
    Turn {
        flavor: Flavor::Cx,
        session: request.session_info.session,
        response_id: request.detect_intent_response_id,
        // The tag is the agent's explicit choice; the intent only stands in without one.
        names: if request.fulfillment_info.tag.trim().is_empty() {
            vec![request.intent_info.display_name]
        } else {
            vec![request.fulfillment_info.tag]
        },
        user,
        parameters: request.session_info.parameters,
        language_code: request.language_code,
        source: String::new(),
        contexts: Vec::new(),
    }
}

// ---- Responses ----

/// `Intent.Message` (ES) and `ResponseMessage` (CX) share this shape for text:
/// the `text` member of the `message` oneof.
#[derive(Debug, Serialize)]
struct TextMessage {
    text: Text,
}

#[derive(Debug, Serialize)]
struct Text {
    text: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EsResponse<'a> {
    fulfillment_text: &'a str,
    fulfillment_messages: Vec<TextMessage>,
    source: &'a str,
    payload: Value,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    output_contexts: Vec<Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EsContextOut {
    name: String,
    lifespan_count: i32,
    parameters: Map<String, Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CxResponse<'a> {
    fulfillment_response: CxFulfillmentResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_info: Option<CxSessionInfoOut<'a>>,
    payload: Value,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CxFulfillmentResponse {
    messages: Vec<TextMessage>,
    merge_behavior: &'static str,
}

#[derive(Debug, Serialize)]
struct CxSessionInfoOut<'a> {
    session: &'a str,
    parameters: Map<String, Value>,
}

/// The `source` fulfillment puts on ES answers.
pub const SOURCE: &str = "tollgate";
/// The ES output context that carries what later turns need (the user id, links).
pub const CONTEXT: &str = "tollgate-billing";
const CONTEXT_LIFESPAN: i32 = 5;

/// What to say, in either edition's format.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// Set on the session (CX) or in the `tollgate-billing` output context (ES).
    pub parameters: Map<String, Value>,
    /// Machine-readable summary for custom integrations (`payload.tollgate`).
    pub payload: Map<String, Value>,
}

/// Renders `answer` in the format `turn` came in.
pub fn render(turn: &Turn, answer: &Answer) -> Value {
    let messages = vec![TextMessage {
        text: Text {
            text: vec![answer.text.clone()],
        },
    }];
    let mut payload = Map::new();
    payload.insert("tollgate".into(), Value::Object(answer.payload.clone()));
    let rendered = match turn.flavor {
        Flavor::Es => {
            // Output contexts in a webhook answer replace the session's active ones,
            // so the received ones go back with ours; without parameters to carry,
            // none are sent and Dialogflow keeps its own.
            let output_contexts = if answer.parameters.is_empty() || turn.session.is_empty() {
                Vec::new()
            } else {
                let mut contexts = turn.contexts.clone();
                contexts.push(
                    serde_json::to_value(EsContextOut {
                        name: format!("{}/contexts/{CONTEXT}", turn.session),
                        lifespan_count: CONTEXT_LIFESPAN,
                        parameters: answer.parameters.clone(),
                    })
                    .expect("plain structs serialise"),
                );
                contexts
            };
            serde_json::to_value(EsResponse {
                fulfillment_text: &answer.text,
                fulfillment_messages: messages,
                source: SOURCE,
                payload: Value::Object(payload),
                output_contexts,
            })
        }
        Flavor::Cx => serde_json::to_value(CxResponse {
            fulfillment_response: CxFulfillmentResponse {
                messages,
                // Our answer stands alone: it replaces the page's static messages.
                merge_behavior: "REPLACE",
            },
            session_info: (!answer.parameters.is_empty()).then(|| CxSessionInfoOut {
                session: &turn.session,
                parameters: answer.parameters.clone(),
            }),
            payload: Value::Object(payload),
        }),
    };
    rendered.expect("plain structs serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_value(value: Value) -> Result<Turn, ParseError> {
        parse(value.to_string().as_bytes())
    }

    #[test]
    fn tells_es_from_cx_by_shape() {
        let es = parse_value(json!({
            "session": "projects/p/agent/sessions/s-1",
            "responseId": "r-1",
            "queryResult": {"action": "billing.status", "intent": {"displayName": "Status"},
                            "parameters": {"user_id": "u_1"}, "languageCode": "en"}
        }))
        .unwrap();
        assert_eq!(es.flavor, Flavor::Es);
        assert_eq!(es.session_id(), "s-1");
        assert_eq!(es.names, ["billing.status", "Status"]);
        assert_eq!(es.user, Some(UserRef::UserId("u_1".into())));

        let cx = parse_value(json!({
            "detectIntentResponseId": "r-2",
            "fulfillmentInfo": {"tag": "billing.credits"},
            "sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s-2",
                            "parameters": {"email": "a@example.com"}}
        }))
        .unwrap();
        assert_eq!(cx.flavor, Flavor::Cx);
        assert_eq!(cx.label(), "billing.credits");
        assert_eq!(cx.user, Some(UserRef::Email("a@example.com".into())));

        assert!(matches!(
            parse(b"{\"hello\": 1}"),
            Err(ParseError::Unrecognized)
        ));
        assert!(matches!(parse(b"[1, 2]"), Err(ParseError::Unrecognized)));
        assert!(matches!(
            parse(b"{\"queryResult\""),
            Err(ParseError::Json(_))
        ));
        assert!(matches!(
            parse(b"{\"queryResult\": \"status\"}"),
            Err(ParseError::Invalid {
                flavor: Flavor::Es,
                ..
            })
        ));
    }

    #[test]
    fn nulls_are_defaults_and_numbers_are_doubles() {
        let turn = parse_value(json!({
            "session": null,
            "queryResult": {"action": null, "parameters": {"userId": 42.0, "amount": 500.0, "bad": 1.5},
                            "intent": null, "outputContexts": null},
            "originalDetectIntentRequest": null
        }))
        .unwrap();
        assert_eq!(turn.user, Some(UserRef::UserId("42".into())));
        assert_eq!(turn.count_parameter("amount"), Some(500));
        assert_eq!(turn.count_parameter("bad"), None);
        assert_eq!(turn.count_parameter("missing"), None);
    }

    #[test]
    fn the_payload_wins_over_parameters() {
        let turn = parse_value(json!({
            "queryResult": {"parameters": {"email": "typed@example.com"}},
            "originalDetectIntentRequest": {"source": "web", "payload": {"user": {"userId": "u_app"}}}
        }))
        .unwrap();
        assert_eq!(turn.user, Some(UserRef::UserId("u_app".into())));
        let from_context = parse_value(json!({
            "queryResult": {"parameters": {}, "outputContexts": [
                {"name": "projects/p/agent/sessions/s/contexts/tollgate-billing", "lifespanCount": 4,
                 "parameters": {"user_id": "u_ctx", "user_id.original": ""}}]}
        }))
        .unwrap();
        assert_eq!(from_context.user, Some(UserRef::UserId("u_ctx".into())));
        assert!(!format!("{:?}", UserRef::Email("secret@example.com".into())).contains("secret"));
    }

    #[test]
    fn a_debug_print_of_a_turn_names_parameters_without_their_values() {
        let turn = parse_value(json!({
            "session": "projects/p/agent/sessions/s42",
            "queryResult": {"parameters": {"email": "typed@example.com"}, "outputContexts": [
                {"name": "projects/p/agent/sessions/s42/contexts/other", "parameters": {"note": "private@example.com"}}]}
        }))
        .unwrap();
        let printed = format!("{turn:?}");
        assert!(printed.contains("\"email\""), "{printed}");
        assert!(printed.contains("s42"), "{printed}");
        assert!(!printed.contains("@example.com"), "{printed}");
    }

    #[test]
    fn renders_each_format() {
        let es = parse_value(json!({"session": "projects/p/agent/sessions/s", "queryResult": {
            "outputContexts": [
                {"name": "projects/p/agent/sessions/s/contexts/plan-chosen", "lifespanCount": 2, "parameters": {"plan": "pro"}},
                {"name": "projects/p/agent/sessions/s/contexts/tollgate-billing", "lifespanCount": 1, "parameters": {"user_id": "old"}}
            ]}}))
        .unwrap();
        let mut parameters = Map::new();
        parameters.insert("user_id".into(), json!("u_1"));
        let answer = Answer {
            text: "Hello".into(),
            parameters,
            payload: Map::new(),
        };
        assert_eq!(
            render(&es, &answer),
            json!({
                "fulfillmentText": "Hello",
                "fulfillmentMessages": [{"text": {"text": ["Hello"]}}],
                "source": "tollgate",
                "payload": {"tollgate": {}},
                // Received contexts go back (ours replaced by the new one).
                "outputContexts": [
                    {"name": "projects/p/agent/sessions/s/contexts/plan-chosen", "lifespanCount": 2, "parameters": {"plan": "pro"}},
                    {"name": "projects/p/agent/sessions/s/contexts/tollgate-billing",
                     "lifespanCount": 5, "parameters": {"user_id": "u_1"}}
                ]
            })
        );
        let cx = parse_value(
            json!({"sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s"}}),
        )
        .unwrap();
        assert_eq!(
            render(&cx, &answer),
            json!({
                "fulfillmentResponse": {"messages": [{"text": {"text": ["Hello"]}}], "mergeBehavior": "REPLACE"},
                "sessionInfo": {"session": "projects/p/locations/l/agents/a/sessions/s", "parameters": {"user_id": "u_1"}},
                "payload": {"tollgate": {}}
            })
        );
    }
}
