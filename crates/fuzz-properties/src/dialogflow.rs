//! Fulfillment's Dialogflow webhook request parser (ES and CX) and the answer
//! rendered for the turn it makes.
//!
//! Input: a webhook request body.

use serde_json::{Map, Value, json};
use tollgate_fulfillment::dialogflow::{
    self, Answer, CONTEXT, Flavor, ParseError, SOURCE, UserRef,
};

/// Entitlements refuses longer subjects.
const MAX_SUBJECT_LEN: usize = 320;

pub fn check(data: &[u8]) {
    let parsed = dialogflow::parse(data);
    let object = match serde_json::from_slice::<Value>(data) {
        Err(_) => {
            assert!(matches!(parsed, Err(ParseError::Json(_))), "{parsed:?}");
            return;
        }
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            assert!(
                matches!(parsed, Err(ParseError::Unrecognized)),
                "{parsed:?}"
            );
            return;
        }
    };
    let Ok(turn) = parsed else { return };
    let expected = if object.contains_key("queryResult") {
        Flavor::Es
    } else {
        Flavor::Cx
    };
    assert_eq!(turn.flavor, expected);

    match &turn.user {
        Some(UserRef::UserId(id)) => assert_plausible(id),
        Some(UserRef::Email(email)) => {
            assert_plausible(email);
            let (local, domain) = email.split_once('@').expect("an email has an @");
            assert!(!local.is_empty() && domain.contains('.'));
            assert!(!domain.starts_with('.') && !domain.ends_with('.'));
            assert!(
                !format!("{:?}", turn.user).contains(email.as_str()),
                "emails never print"
            );
        }
        None => {}
    }
    if let Some(user) = &turn.user {
        assert!(user.subject().len() <= MAX_SUBJECT_LEN);
    }
    assert!(turn.session.ends_with(turn.session_id()));
    assert!(turn.label().is_empty() || turn.names.iter().any(|n| n == turn.label()));
    for name in turn.parameters.keys() {
        if let Some(text) = turn.string_parameter(name) {
            assert!(!text.is_empty() && text == text.trim());
        }
        if let Some(count) = turn.count_parameter(name) {
            assert!(count < 9_000_000_000_000_000);
        }
    }
    let own = format!("/contexts/{CONTEXT}");
    for context in &turn.contexts {
        let name = context.get("name").and_then(Value::as_str);
        assert!(
            name.is_some_and(|n| !n.ends_with(&own)),
            "ours is never echoed"
        );
    }

    for parameters in [
        Map::new(),
        Map::from_iter([("user_id".into(), json!("u_1"))]),
    ] {
        let answer = Answer {
            text: "Your plan is Pro.".into(),
            parameters,
            payload: Map::new(),
        };
        check_render(&turn, &answer);
    }
}

fn assert_plausible(user: &str) {
    assert!(!user.is_empty() && user.len() <= 254 && user == user.trim());
    assert!(!user.chars().any(char::is_control));
}

fn check_render(turn: &dialogflow::Turn, answer: &Answer) {
    let rendered = dialogflow::render(turn, answer);
    let text = json!([{"text": {"text": [answer.text]}}]);
    match turn.flavor {
        Flavor::Es => {
            assert_eq!(rendered["fulfillmentText"], json!(answer.text));
            assert_eq!(rendered["fulfillmentMessages"], text);
            assert_eq!(rendered["source"], json!(SOURCE));
            let contexts = rendered.get("outputContexts").and_then(Value::as_array);
            if answer.parameters.is_empty() || turn.session.is_empty() {
                assert!(
                    contexts.is_none(),
                    "nothing to carry: Dialogflow keeps its own"
                );
            } else {
                let contexts = contexts.expect("ours carries the parameters");
                assert_eq!(contexts.len(), turn.contexts.len() + 1);
                assert_eq!(&contexts[..turn.contexts.len()], &turn.contexts[..]);
                let ours = &contexts[turn.contexts.len()];
                assert_eq!(
                    ours["name"],
                    json!(format!("{}/contexts/{CONTEXT}", turn.session))
                );
                assert_eq!(ours["parameters"], Value::Object(answer.parameters.clone()));
            }
        }
        Flavor::Cx => {
            assert_eq!(rendered["fulfillmentResponse"]["messages"], text);
            let session_info = rendered.get("sessionInfo");
            assert_eq!(session_info.is_some(), !answer.parameters.is_empty());
        }
    }
    // Valid JSON, though not always equal once read back: without its `float_roundtrip`
    // feature serde_json reads a number of many digits a few units in the last place
    // off, so an echoed context may differ by that (fuzz/regressions/dialogflow/).
    let reparsed: Value = serde_json::from_str(&rendered.to_string()).expect("an answer is JSON");
    assert_eq!(reparsed["payload"], rendered["payload"]);
}
