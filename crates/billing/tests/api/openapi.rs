//! The committed OpenAPI document describes every route the app registers (so the two
//! cannot drift), and is what `GET /v1/openapi.json` serves.

use serde_json::Value;

use crate::helpers::*;

fn committed() -> Value {
    let text = std::fs::read_to_string(format!(
        "{}/docs/openapi.json",
        tollgate_test_support::workspace_root().display()
    ))
    .unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

#[test]
fn every_registered_route_is_documented_and_every_documented_one_registered() {
    let document = committed();
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let registered = tollgate_billing::api::registered_routes();
    assert!(registered.len() >= 15, "{registered:?}");
    for (method, path) in &registered {
        let operation = &paths
            .get(path.as_str())
            .unwrap_or_else(|| panic!("{path} is not in docs/openapi.json"))[method.to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is not in docs/openapi.json"
        );
        assert!(
            operation["operationId"].is_string(),
            "{method} {path} has no operationId"
        );
        assert!(
            operation["responses"].is_object(),
            "{method} {path} has no responses"
        );
    }
    for (path, item) in paths {
        for (method, _) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                registered
                    .iter()
                    .any(|(m, p)| p == path && m.eq_ignore_ascii_case(method)),
                "docs/openapi.json has {method} {path}, which the app does not serve"
            );
        }
    }
}

#[tokio::test]
async fn the_document_is_served() {
    let api = spawn_api(Options::default()).await;
    let served = api.send(api.http.get(api.url("/v1/openapi.json"))).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.body, committed());
}
