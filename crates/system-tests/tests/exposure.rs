//! What the internet reaches: the Ingress objects route exactly the public paths, and
//! none of the endpoints that are only for the cluster (Prometheus `/metrics`, the
//! probes, gRPC health and reflection, billing's probe port). The services themselves
//! serve `/metrics` beside their public routes (ingest, fulfillment) or on a port of
//! its own (billing, entitlements): keeping it off the internet is this file's job,
//! with the NetworkPolicies (docs/security.md, "Exposure").

use std::collections::BTreeSet;

/// (host, path, service, port name) of every rule in the Ingress manifests.
fn routes() -> BTreeSet<(String, String, String, String)> {
    let path = tollgate_test_support::workspace_root().join("k8s/base/ingress/ingress.yaml");
    let text = std::fs::read_to_string(&path).expect("the Ingress manifests");
    let value = |line: &str, key: &str| {
        line.trim()
            .trim_start_matches("- ")
            .strip_prefix(key)
            .map(|v| v.trim().to_string())
    };
    let mut found = BTreeSet::new();
    let (mut host, mut path, mut service) = (String::new(), String::new(), String::new());
    for line in text.lines() {
        if let Some(h) = value(line, "host:") {
            host = h;
        } else if let Some(p) = value(line, "path:") {
            path = p;
        } else if let Some(s) =
            value(line, "name:").filter(|_| line.starts_with("                "))
        {
            // The backend's service name (deeper than any metadata name).
            service = s;
        } else if let Some(port) = value(line, "port:") {
            let port = port
                .trim_start_matches("{ name:")
                .trim_end_matches('}')
                .trim()
                .to_string();
            found.insert((host.clone(), path.clone(), service.clone(), port));
        }
    }
    found
}

#[test]
fn the_ingress_routes_only_public_paths() {
    let route = |host: &str, path: &str, service: &str, port: &str| {
        (
            format!("{host}.tollgate.example.com"),
            path.to_string(),
            format!("tollgate-{service}"),
            port.to_string(),
        )
    };
    let expected = BTreeSet::from([
        route("hooks", "/webhook", "ingest", "http"),
        route("hooks", "/webhooks/stripe", "ingest", "http"),
        route(
            "grpc",
            "/tollgate.entitlements.v1.Entitlements/",
            "entitlements",
            "grpc",
        ),
        route(
            "api",
            "/tollgate.entitlements.v1.Entitlements/",
            "entitlements",
            "grpc",
        ),
        route("api", "/v1", "billing", "api"),
        route("api", "/billing", "billing", "api"),
        route("dialogflow", "/webhook", "fulfillment", "http"),
    ]);
    let routed = routes();
    assert_eq!(
        routed, expected,
        "a new public route needs a security review (docs/security.md) and this list"
    );
    for (host, path, service, port) in &routed {
        for internal in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/grpc.health.v1.Health/",
            "/grpc.reflection.",
        ] {
            // A prefix that would also match an internal endpoint counts too ("/").
            assert!(
                !(internal.starts_with(path.as_str()) || path.starts_with(internal)),
                "{host}{path} -> {service}:{port} exposes {internal}"
            );
        }
        // Billing's probes and metrics port; entitlements' metrics port.
        assert!(
            !["probes", "metrics"].contains(&port.as_str()),
            "{host}{path} -> {service}:{port}"
        );
    }
}
