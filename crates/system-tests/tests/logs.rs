//! No secret and no email address in any log line of any service, at DEBUG, in both
//! log formats. The real binaries run as processes with `RUST_LOG=debug` (every crate,
//! dependencies included) and their whole stdout and stderr is kept; a realistic day is
//! driven through them, failures included: Stripe events through ingest, RabbitMQ and
//! billing (a payment-failed email over authenticated SMTP, refused once by the server
//! with the address in its reply), entitlements checks with service tokens and users'
//! JWTs, billing's API (users, services, an admin, checkout through the Stripe
//! stand-in) and Dialogflow turns through fulfillment; bad signatures, bad tokens, other
//! users' data and unknown users. Then every line is searched for every configured
//! secret, for every token the test made, and for anything shaped like an email address;
//! so is every service's `/metrics` as Prometheus would scrape it.

mod support;

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::{SERVICE_TOKEN, Service, Stores, authed, event, eventually, free_port};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::entitlements_client::EntitlementsClient;
use tollgate_test_support::{
    Reply, SinkOptions, SmtpFault, SmtpSink, StripeStandIn, invoice_object, signed_headers,
    stripe_object, subscription_object, unix_now,
};
use tonic::Code;

/// Every secret one run configures, each unique to the run (so a match means a leak).
struct Secrets {
    webhook: String,
    database_password: String,
    amqp_password: String,
    smtp_password: String,
    stripe_key: String,
    jwt_secret: String,
    billing_service_token: String,
    billing_fulfillment_token: String,
    admin_token: String,
    dialogflow_password: String,
}

impl Secrets {
    fn new() -> Self {
        let unique = |prefix: &str| format!("{prefix}{}", uuid::Uuid::new_v4().simple());
        Self {
            webhook: unique("whsec_logscan_"),
            database_password: unique("dbpw-"),
            amqp_password: unique("amqppw-"),
            smtp_password: unique("smtppw-"),
            stripe_key: unique("sk_test_logscan"),
            jwt_secret: unique("jwt-secret-of-at-least-32-bytes-"),
            billing_service_token: unique("billing-service-"),
            billing_fulfillment_token: unique("billing-fulfillment-"),
            admin_token: unique("billing-admin-"),
            dialogflow_password: unique("dialogflow-"),
        }
    }

    fn all(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRIPE_WEBHOOK_SECRET", self.webhook.clone()),
            ("the DATABASE_URL password", self.database_password.clone()),
            ("the AMQP_URL password", self.amqp_password.clone()),
            ("the SMTP_URL password", self.smtp_password.clone()),
            ("STRIPE_SECRET_KEY", self.stripe_key.clone()),
            ("a JWT secret", self.jwt_secret.clone()),
            (
                "a billing service token",
                self.billing_service_token.clone(),
            ),
            (
                "fulfillment's billing token",
                self.billing_fulfillment_token.clone(),
            ),
            ("an admin token", self.admin_token.clone()),
            ("the Dialogflow password", self.dialogflow_password.clone()),
            ("the entitlements service token", SERVICE_TOKEN.to_string()),
        ]
    }
}

/// Addresses the flow uses; none may reach a log.
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const MALLORY: &str = "mallory@example.com";
const UNKNOWN: &str = "Dora.Unknown@Example.com";

const SUCCESS_URL: &str = "https://app.example.test/billing/success";

/// Every email-shaped string in `text`: `local@domain.tld`, also percent-encoded
/// (`local%40domain.tld`, as in a logged URL). A hand-written scanner, not a regex
/// crate: the test needs nothing more.
fn email_addresses(text: &str) -> Vec<String> {
    let local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    let mut found = Vec::new();
    for separator in ["@", "%40"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(separator).map(|i| from + i) {
            from = at + separator.len();
            let start = text[..at]
                .char_indices()
                .rev()
                .take_while(|&(_, c)| local(c))
                .last()
                .map_or(at, |(i, _)| i);
            let end = text[from..]
                .char_indices()
                .take_while(|&(_, c)| domain(c))
                .last()
                .map_or(from, |(i, c)| from + i + c.len_utf8());
            let host = text[from..end].trim_end_matches('.');
            let tld_ok = host.rsplit_once('.').is_some_and(|(name, tld)| {
                !name.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
            });
            if start < at && tld_ok {
                found.push(format!("{}{separator}{host}", &text[start..at]));
            }
        }
    }
    found
}

#[test]
fn the_scanner_finds_addresses_and_nothing_else() {
    assert_eq!(
        email_addresses(r#"{"to":"Alice.B+x@Example.co.uk","n":1}"#),
        ["Alice.B+x@Example.co.uk"]
    );
    assert_eq!(
        email_addresses("GET /v1/verify-payment/bob%40example.com 200"),
        ["bob%40example.com"]
    );
    assert_eq!(
        email_addresses("sent=carol@example.com."),
        ["carol@example.com"]
    );
    for clean in [
        "billing@localhost",
        "user@",
        "@example.com",
        "a@b.c1",
        "postgres://u:<redacted>@127.0.0.1:5432/db",
        "sha256@1.2",
    ] {
        assert!(email_addresses(clean).is_empty(), "{clean}");
    }
}

fn jwt(sub: &str, email: Option<&str>, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "email": email, "exp": unix_now() + 600 }),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("a JWT")
}

fn customer_created(id: &str, user: &str, email: &str, created: i64) -> Vec<u8> {
    let mut customer = stripe_object("customer");
    customer["id"] = id.into();
    customer["email"] = email.into();
    customer["metadata"] = json!({ "user_id": user });
    event(
        "customer.created",
        &format!("evt_{id}_created"),
        created,
        customer,
    )
}

fn fulfillment_fixture(name: &str) -> Value {
    let path = tollgate_test_support::workspace_root()
        .join("crates/fulfillment/tests/fixtures")
        .join(name);
    serde_json::from_slice(&std::fs::read(&path).expect("a fulfillment fixture")).expect("JSON")
}

/// A Dialogflow ES turn with `action`, the user named in the app's payload.
fn es_turn(action: &str, user: Value) -> Value {
    let mut request = fulfillment_fixture("es-webhook-request.json");
    request["queryResult"]["action"] = action.into();
    request["originalDetectIntentRequest"]["payload"] = json!({ "user": user });
    request
}

/// A Dialogflow CX turn with `tag` and these session parameters.
fn cx_turn(tag: &str, parameters: Value) -> Value {
    let mut request = fulfillment_fixture("cx-webhook-request.json");
    request["fulfillmentInfo"]["tag"] = tag.into();
    request["sessionInfo"]["parameters"] = parameters;
    request
}

/// What one run produced: each service's whole output, and its metrics.
struct Run {
    logs: Vec<(String, String)>,
    /// Every bearer token and signature the test sent (JWTs included).
    sent_tokens: Vec<String>,
    secrets: Vec<(&'static str, String)>,
}

/// Drives the whole flow with every service logging at DEBUG in `format`.
async fn run(format: &str) -> Run {
    let secrets = Secrets::new();
    let stores =
        Stores::create_with_passwords(&secrets.database_password, &secrets.amqp_password).await;
    let stand_in = StripeStandIn::start().await;
    let sink = SmtpSink::start_with(SinkOptions {
        tls: true,
        login: Some(("billing-mailer".into(), secrets.smtp_password.clone())),
        ..SinkOptions::default()
    })
    .await;

    let api_port = free_port();
    let mut billing = stores.billing("billing");
    let mut entitlements = stores.entitlements("entitlements");
    let mut ingest = stores.ingest("ingest");
    for (name, value) in [
        (
            "SMTP_URL",
            format!(
                "smtp://billing-mailer:{}@{}?tls=required",
                secrets.smtp_password,
                sink.addr()
            ),
        ),
        ("SMTP_CA_FILE", sink.certificate().display().to_string()),
        ("EMAIL_RETRY_BASE_MS", "200".into()),
        ("STRIPE_SECRET_KEY", secrets.stripe_key.clone()),
        ("STRIPE_API_BASE", stand_in.api_base()),
        ("CHECKOUT_SUCCESS_URL", SUCCESS_URL.into()),
        (
            "CHECKOUT_CANCEL_URL",
            "https://app.example.test/billing".into(),
        ),
        (
            "PORTAL_RETURN_URL",
            "https://app.example.test/account".into(),
        ),
        ("BILLING_API_ADDR", format!("127.0.0.1:{api_port}")),
        (
            "BILLING_API_SERVICE_TOKENS",
            format!(
                "backend:{},fulfillment:{}",
                secrets.billing_service_token, secrets.billing_fulfillment_token
            ),
        ),
        (
            "BILLING_API_ADMIN_TOKENS",
            format!("ops:{}", secrets.admin_token),
        ),
        ("BILLING_API_JWT_HS256_SECRET", secrets.jwt_secret.clone()),
    ] {
        billing.set_env(name, value);
    }
    entitlements.set_env("ENTITLEMENTS_JWT_HS256_SECRET", secrets.jwt_secret.clone());
    ingest.set_env("STRIPE_WEBHOOK_SECRET", secrets.webhook.clone());
    let dialogflow_auth = format!("dialogflow:{}", secrets.dialogflow_password);
    let mut fulfillment = stores.fulfillment("fulfillment", entitlements.port, &dialogflow_auth);
    fulfillment.set_env(
        "FULFILLMENT_BILLING_API_URL",
        format!("http://127.0.0.1:{api_port}"),
    );
    fulfillment.set_env(
        "FULFILLMENT_BILLING_API_TOKEN",
        secrets.billing_fulfillment_token.clone(),
    );
    let mut services = [billing, entitlements, ingest, fulfillment];
    for service in &mut services {
        service.set_env("LOG_FORMAT", format);
        service.set_env("RUST_LOG", "debug");
        service.start().await;
    }
    let [billing, entitlements, ingest, fulfillment] = &mut services;

    let mut sent_tokens = Vec::new();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client");

    // 1. Stripe: two customers with addresses, their subscriptions, a payment, a failed
    //    payment (emailed); a forged signature and a signed body that is no event.
    let now = unix_now();
    let webhooks = [
        customer_created("cus_alice", "user_alice", ALICE, now - 20),
        customer_created("cus_bob", "user_bob", BOB, now - 20),
        event(
            "customer.subscription.created",
            "evt_sub_alice",
            now - 15,
            subscription_object("sub_alice", "cus_alice", "active", "price_pro_monthly"),
        ),
        event(
            "customer.subscription.created",
            "evt_sub_bob",
            now - 15,
            subscription_object("sub_bob", "cus_bob", "active", "price_pro_monthly"),
        ),
        event(
            "invoice.paid",
            "evt_paid_alice",
            now - 10,
            invoice_object("in_alice", "cus_alice", "sub_alice", "paid", now - 10),
        ),
        event(
            "invoice.payment_failed",
            "evt_failed_bob",
            now - 5,
            invoice_object("in_bob", "cus_bob", "sub_bob", "open", now - 5),
        ),
    ];
    // The relay names the address in its refusal, as real ones do; billing retries.
    sink.inject(SmtpFault::RefuseRecipient(
        "450 4.2.1 <bob@example.com>: mailbox busy, try later",
    ));
    let webhook_url = format!("http://127.0.0.1:{}/webhook", ingest.port);
    let post_signed = |secret: &str, body: &[u8]| {
        http.post(&webhook_url)
            .header("content-type", "application/json")
            .header("stripe-signature", signed_headers(secret, body))
            .body(body.to_vec())
            .send()
    };
    for body in &webhooks {
        let response = post_signed(&secrets.webhook, body)
            .await
            .expect("ingest answers");
        assert_eq!(response.status(), 200);
    }
    let forged = post_signed("whsec_not_ours", &webhooks[0])
        .await
        .expect("ingest answers");
    assert_eq!(forged.status(), 400);
    let not_an_event = format!(
        r#"{{"id":"evt_x","type":"customer.updated","created":"{MALLORY}","livemode":false}}"#
    );
    let refused = post_signed(&secrets.webhook, not_an_event.as_bytes())
        .await
        .expect("ingest answers");
    assert_eq!(refused.status(), 400);

    let pool = stores.db.pool().await;
    eventually("billing has processed the six events", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM stripe_events WHERE status = 'processed'",
        )
        .fetch_one(&pool)
        .await
        .is_ok_and(|n| n == 6)
    })
    .await;
    eventually(
        "every queued email is delivered, bob's among them",
        || async {
            let unsent: i64 =
                sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status <> 'sent'")
                    .fetch_one(&pool)
                    .await
                    .expect("the outbox");
            unsent == 0
                && sink
                    .messages()
                    .iter()
                    .any(|m| m.envelope_to == [BOB.to_string()])
        },
    )
    .await;
    let (emails, attempts): (i64, i64) =
        sqlx::query_as("SELECT count(*), sum(attempts)::bigint FROM email_outbox")
            .fetch_one(&pool)
            .await
            .expect("the outbox");
    assert_eq!(attempts, emails + 1, "one refusal, retried");

    // 2. Entitlements: services and users, by id and by address; strangers refused.
    let alice_jwt = jwt("user_alice", Some(ALICE), &secrets.jwt_secret);
    let carol_jwt = jwt("user_carol", Some(CAROL), &secrets.jwt_secret);
    let forged_jwt = jwt(
        "user_alice",
        Some(ALICE),
        "another-secret-of-at-least-32-bytes!!",
    );
    sent_tokens.extend([alice_jwt.clone(), carol_jwt.clone(), forged_jwt.clone()]);
    let mut grpc = EntitlementsClient::new(support::channel(entitlements.port));
    let check = |subject: &str| pb::CheckRequest {
        subject: subject.into(),
        feature: "docs.read".into(),
        at_least_version: 0,
    };
    let with_token = |message: pb::CheckRequest, token: &str| {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII"),
        );
        request
    };
    eventually("alice's subscription reaches entitlements", || {
        let mut grpc = grpc.clone();
        async move {
            grpc.check(authed(check("user_alice")))
                .await
                .is_ok_and(|r| r.into_inner().allowed)
        }
    })
    .await;
    let by_address = grpc
        .check(authed(check(ALICE)))
        .await
        .expect("a check by address");
    assert!(by_address.into_inner().allowed);
    let own = grpc
        .check(with_token(check(ALICE), &alice_jwt))
        .await
        .expect("a user asking about herself");
    assert!(own.into_inner().allowed);
    let other = grpc
        .check(with_token(check(BOB), &alice_jwt))
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    for token in [forged_jwt.as_str(), "not-a-token-at-all"] {
        let refused = grpc
            .check(with_token(check(ALICE), token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated);
    }
    let unknown = grpc
        .check(authed(check(UNKNOWN)))
        .await
        .expect("an unknown address");
    assert!(!unknown.into_inner().allowed);
    grpc.get_entitlements(authed(pb::GetEntitlementsRequest {
        subject: BOB.into(),
        ..Default::default()
    }))
    .await
    .expect("bob's entitlements");

    // 3. Billing's API: users, services, an admin; checkout through the Stripe stand-in
    //    (one refused by Stripe with the address in its message).
    let api = |path: &str| format!("http://127.0.0.1:{api_port}{path}");
    let get = |path: String, token: &str| http.get(path).bearer_auth(token).send();
    let status = |response: reqwest::Result<reqwest::Response>| {
        response.expect("billing's API answers").status().as_u16()
    };
    assert_eq!(
        status(get(api("/v1/billing/status"), &alice_jwt).await),
        200
    );
    assert_eq!(
        status(get(api("/v1/billing/status?user_id=user_bob"), &alice_jwt).await),
        403
    );
    assert_eq!(
        status(
            get(
                api("/v1/billing/status?user_id=user_bob"),
                &secrets.billing_service_token
            )
            .await
        ),
        200
    );
    for address in [ALICE, UNKNOWN] {
        assert_eq!(
            status(
                get(
                    api(&format!("/v1/verify-payment/{address}")),
                    &secrets.billing_service_token
                )
                .await
            ),
            200
        );
    }
    assert_eq!(status(get(api("/v1/user-auth"), &carol_jwt).await), 200);
    assert_eq!(status(get(api("/v1/user-auth"), &forged_jwt).await), 401);
    assert_eq!(
        status(get(api("/v1/admin/dead-letters"), &secrets.admin_token).await),
        200
    );
    assert_eq!(
        status(
            get(
                api("/v1/admin/customers/user_bob/transactions"),
                &secrets.admin_token
            )
            .await
        ),
        200
    );
    assert_eq!(
        status(
            get(
                api("/v1/admin/dead-letters"),
                &secrets.billing_service_token
            )
            .await
        ),
        403
    );
    let mut session = stripe_object("checkout.session");
    session["id"] = "cs_test_logscan".into();
    session["url"] = "https://checkout.stripe.test/c/pay/cs_test_logscan".into();
    stand_in.reply("POST", "/v1/checkout/sessions", Reply::object(&session));
    stand_in.reply_once(
        "POST",
        "/v1/customers",
        Reply::stripe_error(
            400,
            "invalid_request_error",
            Some("email_invalid"),
            &format!("Invalid email address: {CAROL}"),
        ),
    );
    let checkout = |token: &str| {
        http.post(api("/v1/checkout/sessions"))
            .bearer_auth(token)
            .json(&json!({ "kind": "topup", "pack": 500 }))
            .send()
    };
    assert_eq!(status(checkout(&alice_jwt).await), 201);
    // Stripe refusing the customer is billing's problem, not the user's: a 502.
    assert_eq!(status(checkout(&carol_jwt).await), 502);
    let bad_body = http
        .post(api("/v1/checkout/sessions"))
        .bearer_auth(&alice_jwt)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"kind":"subscription","plan":"pro_monthly","email":7,"user_id":"{MALLORY}"}}"#
        ))
        .send()
        .await;
    assert_eq!(status(bad_body), 400);

    // 4. Dialogflow through fulfillment: users by address and id, an unknown one, a
    //    checkout link, and a caller without the right password.
    let turn = |body: Value, auth: (&str, &str)| {
        http.post(format!("http://127.0.0.1:{}/webhook", fulfillment.port))
            .basic_auth(auth.0, Some(auth.1))
            .json(&body)
            .send()
    };
    let dialogflow = ("dialogflow", secrets.dialogflow_password.as_str());
    sent_tokens.push(format!(
        "Basic {}",
        base64_of(&format!("dialogflow:{}", secrets.dialogflow_password))
    ));
    for body in [
        es_turn("billing.status", json!({ "email": ALICE })),
        es_turn("billing.upgrade", json!({ "email": BOB })),
        es_turn("billing.features", json!({ "userId": "user_alice" })),
        cx_turn("billing.credits", json!({ "email": UNKNOWN })),
    ] {
        let answer = turn(body, dialogflow).await.expect("fulfillment answers");
        assert_eq!(answer.status(), 200);
    }
    let refused = turn(
        es_turn("billing.status", json!({ "email": ALICE })),
        ("dialogflow", "wrong-password-0123"),
    )
    .await
    .expect("fulfillment answers");
    assert_eq!(refused.status(), 401);

    // Everything said. What Prometheus would scrape is searched as well: no label may
    // carry a user, an address or a token.
    let mut scraped = Vec::new();
    for service in [&*fulfillment, &*ingest, &*entitlements, &*billing] {
        scraped.push((
            format!("{} /metrics", service.name),
            service.metrics().await,
        ));
    }
    // Stop each service (SIGTERM, a clean exit) so its output is whole.
    for service in [fulfillment, ingest, entitlements, billing] {
        service.terminate().await;
    }
    let mut logs: Vec<(String, String)> = services
        .iter()
        .map(|s: &Service| (s.name.clone(), s.log()))
        .collect();
    logs.extend(scraped);
    drop(pool);
    Run {
        logs,
        sent_tokens,
        secrets: secrets.all(),
    }
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Every log line that holds a secret or an address, named.
fn leaks(run: &Run) -> Vec<String> {
    let mut needles: Vec<(String, String)> = run
        .secrets
        .iter()
        .map(|(what, value)| (what.to_string(), value.clone()))
        .collect();
    for token in &run.sent_tokens {
        needles.push(("a token the test sent".into(), token.clone()));
        // A JWT's signature alone is as secret as the whole.
        if let Some((_, signature)) = token.rsplit_once('.') {
            needles.push(("a JWT signature".into(), signature.to_string()));
        }
    }
    let mut found = Vec::new();
    for (service, log) in &run.logs {
        for (number, line) in log.lines().enumerate() {
            for (what, value) in &needles {
                if line.contains(value.as_str()) {
                    found.push(format!("{service}:{}: {what}: {line}", number + 1));
                }
            }
            for address in email_addresses(line) {
                found.push(format!(
                    "{service}:{}: the address {address}: {line}",
                    number + 1
                ));
            }
        }
    }
    found
}

/// The logs really are at DEBUG, in the format asked for, and not empty.
fn assert_captured(run: &Run, format: &str) {
    for (service, log) in run
        .logs
        .iter()
        .filter(|(name, _)| !name.ends_with("/metrics"))
    {
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(lines.len() > 20, "{service} logged {} lines", lines.len());
        match format {
            "json" => {
                for line in &lines {
                    let parsed: Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{service}: not a JSON line ({e}): {line}"));
                    assert!(parsed["level"].is_string(), "{service}: {line}");
                }
                assert!(
                    log.contains(r#""level":"DEBUG""#),
                    "{service} logged nothing at DEBUG"
                );
            }
            _ => {
                assert!(
                    lines.iter().all(|l| !l.starts_with('{')),
                    "{service} logged JSON in text mode"
                );
                assert!(log.contains("DEBUG"), "{service} logged nothing at DEBUG");
                // Its stdout is a pipe here, as in a container: no colour codes.
                assert!(
                    !log.contains('\x1b'),
                    "{service} wrote terminal colour codes into a pipe"
                );
            }
        }
    }
}

async fn no_secret_or_address_in_any_log_line(format: &str) {
    let run = run(format).await;
    assert_captured(&run, format);
    let leaks = leaks(&run);
    assert!(
        leaks.is_empty(),
        "{} log lines leak (format {format}):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_at_debug_hold_no_secret_and_no_email_address() {
    no_secret_or_address_in_any_log_line("json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_at_debug_hold_no_secret_and_no_email_address() {
    no_secret_or_address_in_any_log_line("text").await;
}
