//! The billing page (`GET /billing`): served with its own strict policy, and driven end
//! to end in Debian's headless Chromium by tests/browser/billing-page.mjs (playwright-core)
//! against the real API, state built from real Stripe events, and the Stripe stand-in.
//! `scripts/browser-tools.sh` (run by `make test`) installs Chromium, Node.js and the
//! pinned playwright-core; without them the browser test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_test_support::{Reply, stripe_object, unix_now};

use crate::helpers::*;

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy_and_no_inline_script() {
    let api = spawn_api(Options::default()).await;
    let page = api.send(api.http.get(api.url("/billing"))).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    assert_eq!(csp, tollgate_billing::api::page::PAGE_CSP);
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    // The API's other headers stay.
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));

    let html = api
        .http
        .get(api.url("/billing/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every script is a file of this origin: nothing inline for the policy to block.
    let scripts: Vec<&str> = html.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1, "{html}");
    assert!(scripts[0].starts_with(" src=\"/billing/billing.js\""));
    let handlers = html.split(" on").skip(1).any(|rest| {
        rest.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase())
        })
    });
    assert!(!handlers, "no inline event handlers");
    assert!(!html.contains("style="), "no inline styles");

    for (path, content_type) in [
        ("/billing/billing.js", "text/javascript; charset=utf-8"),
        ("/billing/billing.css", "text/css; charset=utf-8"),
    ] {
        let asset = api.send(api.http.get(api.url(path))).await;
        assert_eq!(asset.status, 200, "{path}");
        assert_eq!(asset.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            asset.header("content-security-policy"),
            Some(tollgate_billing::api::page::PAGE_CSP)
        );
    }
    // The JSON API keeps its own, stricter policy.
    let api_answer = api
        .get("/v1/billing/status", &user_token("user_x", None))
        .await;
    assert_eq!(
        api_answer.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(
        api.send(api.http.get(api.url("/billing/other.js")))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_catalog_lists_the_plans_file_for_sale() {
    let api = spawn_api(Options::default()).await;
    let catalog = api
        .send(api.http.get(api.url("/billing/catalog.json")))
        .await;
    assert_eq!(catalog.status, 200);
    assert_eq!(catalog.body["checkout"], true);
    let keys: Vec<&str> = catalog.body["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["key"].as_str().unwrap())
        .collect();
    // Cheapest tier first, as the plans file ranks them.
    assert_eq!(
        keys,
        [
            "pro_monthly",
            "pro_yearly",
            "pro_plus_monthly",
            "enterprise_yearly"
        ]
    );
    assert_eq!(
        catalog.body["plans"][0],
        json!({"key": "pro_monthly", "name": "Pro monthly", "tier": "pro", "tier_name": "Pro"})
    );
    let packs: Vec<u64> = catalog.body["credit_packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["credits"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = api.plans.credit_packs().iter().map(|p| p.credits).collect();
    assert_eq!(packs, expected);
    assert_eq!(
        catalog.body["credit_packs"][0],
        json!({"credits": 500, "amount": 500, "currency": "usd"})
    );
}

/// Where playwright-core was installed (scripts/browser-tools.sh).
fn browser_modules() -> PathBuf {
    match std::env::var_os("TOLLGATE_BROWSER_MODULES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/tollgate/browser"),
    }
}

fn repo_root() -> PathBuf {
    tollgate_test_support::workspace_root()
}

/// Fails (never skips) with what to run when the browser tools are missing.
fn require_browser_tools() -> PathBuf {
    let fix = "run scripts/browser-tools.sh (make test does) to install Debian's chromium, \
               Node.js and the pinned playwright-core";
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {fix}");
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "node is not on PATH ({node:?}): {fix}"
    );
    let modules = browser_modules();
    assert!(
        modules
            .join("node_modules/playwright-core/package.json")
            .exists(),
        "playwright-core is not installed in {}: {fix}",
        modules.display()
    );
    modules
}

fn usd(cents: i64) -> String {
    let dollars = (cents / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in dollars.chars().enumerate() {
        if i > 0 && (dollars.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("${grouped}.{:02}", cents % 100)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn row_ids(list: &Value) -> Vec<String> {
    list["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_in_user_sees_their_billing_and_goes_to_checkout_and_the_portal() {
    let modules = require_browser_tools();
    // A limit the busy user's reloads pass within seconds, and the others never reach.
    let api = spawn_api(Options {
        rate_limit: 30,
        ..Options::default()
    })
    .await;

    // Paying: Pro monthly, six paid invoices (more than a page of five), a card, credits.
    api.seed_paying("user_page", "cus_page", "page@example.test")
        .await;
    for (n, created) in (3..=6).zip([
        1_757_000_000_i64,
        1_757_100_000,
        1_757_200_000,
        1_757_300_000,
    ]) {
        let mut invoice = tollgate_test_support::invoice_object(
            &format!("in_user_page_{n}"),
            "cus_page",
            "sub_user_page",
            "paid",
            created,
        );
        invoice["hosted_invoice_url"] =
            format!("https://invoice.stripe.test/i/user_page_{n}").into();
        invoice["invoice_pdf"] =
            format!("https://pay.stripe.test/invoice/user_page_{n}/pdf").into();
        api.apply(event(
            &format!("evt_page_in_{n}"),
            "invoice.paid",
            created,
            invoice,
        ))
        .await;
    }
    // Former subscriber: subscribed, then canceled.
    api.customer("cus_former", "user_former", "former@example.test")
        .await;
    let sub = tollgate_test_support::subscription_object(
        "sub_former",
        "cus_former",
        "active",
        "price_pro_monthly",
    );
    api.apply(event(
        "evt_former_sub",
        "customer.subscription.created",
        1_760_000_010,
        sub.clone(),
    ))
    .await;
    let mut ended = sub;
    ended["status"] = "canceled".into();
    ended["canceled_at"] = 1_760_500_000.into();
    ended["ended_at"] = 1_760_500_000.into();
    api.apply(event(
        "evt_former_end",
        "customer.subscription.deleted",
        1_760_500_000,
        ended,
    ))
    .await;

    // Stripe's answers, in the order the script asks: the portal, the credit pack, the plan.
    let mut portal = stripe_object("billing_portal.session");
    portal["customer"] = "cus_page".into();
    portal["url"] = "https://billing.stripe.test/p/session/page".into();
    api.stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::object(&portal),
    );
    for (id, mode) in [
        ("cs_test_page_topup", "payment"),
        ("cs_test_former_pro", "subscription"),
    ] {
        let mut session = stripe_object("checkout.session");
        session["id"] = id.into();
        session["mode"] = mode.into();
        session["url"] = format!("https://checkout.stripe.test/c/pay/{id}").into();
        api.stand_in
            .reply_once("POST", "/v1/checkout/sessions", Reply::object(&session));
    }

    let paying = user_token("user_page", Some("page@example.test"));
    let config = json!({
        "base": api.base,
        "maxLoads": 20,
        "tokens": {
            "paying": paying,
            "former": user_token("user_former", Some("former@example.test")),
            "expired": jwt_hs256(json!({ "sub": "user_page", "exp": unix_now() - 120 })),
            "busy": user_token("user_busy", None),
        },
    });
    let script = repo_root().join("tests/browser/billing-page.mjs");
    let mut node = tokio::process::Command::new("node");
    node.arg(&script)
        .arg(config.to_string())
        .env("TOLLGATE_BROWSER_MODULES", &modules)
        .kill_on_drop(true);
    let run = node.output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run ends (the script gives up after 90 s)")
        .expect("node runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "billing-page.mjs failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));

    // What the paying user saw is what billing holds.
    let status = api.get("/v1/billing/status", &paying).await.body;
    let shown = &report["paying"];
    assert_eq!(shown["state"], "ready", "{shown}");
    assert!(
        !shown["addressBar"].as_str().unwrap().contains("token"),
        "the token left the address bar: {}",
        shown["addressBar"]
    );
    assert_eq!(shown["tier"], "Pro");
    assert_eq!(shown["tierKey"], "pro");
    assert_eq!(shown["status"], "Active");
    assert_eq!(shown["access"], "Yes");
    assert_eq!(
        shown["credits"],
        json!({"balance": "880", "used": "120", "limit": "1,000"})
    );
    assert_eq!(
        shown["lastPayment"],
        status["last_payment_date"].as_str().unwrap()[..10]
    );
    assert_eq!(shown["subscriptionShown"], true);
    assert_eq!(
        shown["subscription"],
        json!({
            "plan": "Pro monthly",
            "status": "Active",
            "cycle": "Monthly",
            "payment": "Paid",
            // subscription_object's period: 2025-10-09 + 30 days.
            "next": "2025-11-08",
        })
    );
    assert_eq!(
        status["subscription"]["next_billing_date"]
            .as_str()
            .unwrap()[..10],
        *"2025-11-08"
    );
    // A live subscription changes plans in the portal, not through a second checkout.
    assert_eq!(
        (
            &shown["upgradeShown"],
            &shown["changePlanShown"],
            &shown["topupShown"],
            &shown["manageShown"]
        ),
        (&json!(false), &json!(true), &json!(true), &json!(true))
    );

    // History: a page of five, then the rest, newest first, as the database orders it.
    let invoices: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT stripe_invoice_id, amount_due, hosted_invoice_url, invoice_pdf FROM invoices
          WHERE stripe_customer_id = 'cus_page' ORDER BY invoice_created DESC, stripe_invoice_id DESC",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    assert_eq!(invoices.len(), 6);
    assert_eq!(shown["invoices"]["pages"], json!([5, 1]));
    assert_eq!(
        row_ids(&shown["invoices"]),
        invoices.iter().map(|i| i.0.clone()).collect::<Vec<_>>()
    );
    for (row, (_, amount, hosted, pdf)) in shown["invoices"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&invoices)
    {
        assert_eq!(row["cells"][2], "Paid", "{row}");
        assert_eq!(row["cells"][3], usd(*amount), "{row}");
        assert_eq!(
            row["links"],
            json!([{"text": "View", "href": hosted}, {"text": "PDF", "href": pdf}])
        );
    }
    let transactions: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT t.id FROM transactions t JOIN customers c ON c.id = t.customer_id
          WHERE c.user_id = 'user_page' ORDER BY t.occurred_at DESC, t.id DESC",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    assert!(transactions.len() > 5, "{transactions:?}");
    assert_eq!(shown["transactions"]["pages"][0], 5);
    assert_eq!(
        row_ids(&shown["transactions"]),
        transactions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    let card = &shown["paymentMethods"]["rows"];
    assert_eq!(card.as_array().unwrap().len(), 1, "{card}");
    assert_eq!(card[0]["id"], "pm_user_page");
    assert!(
        card[0]["cells"][0]
            .as_str()
            .unwrap()
            .starts_with("Visa ending in 4242"),
        "{card}"
    );

    // Manage billing: a portal session for this customer, and the tab went there.
    assert_eq!(
        shown["manage"],
        "https://billing.stripe.test/p/session/page"
    );
    let portals = api
        .stand_in
        .requests_to("POST", "/v1/billing_portal/sessions");
    assert_eq!(portals.len(), 1);
    assert_eq!(
        portals[0].form_value("customer").as_deref(),
        Some("cus_page")
    );
    assert_eq!(
        portals[0].form_value("return_url").as_deref(),
        Some(RETURN_URL)
    );
    // Back from Stripe, the page works without the fragment (the tab kept the token).
    assert_eq!(shown["reloadState"], "ready");
    // Buy credits: a payment-mode checkout for the pack chosen.
    assert_eq!(
        shown["topup"],
        "https://checkout.stripe.test/c/pay/cs_test_page_topup"
    );
    assert!(
        shown["consoleErrors"].as_array().unwrap().is_empty(),
        "no script errors or policy violations: {}",
        shown["consoleErrors"]
    );
    assert_eq!(
        strings(&shown["left"]),
        [
            "https://billing.stripe.test/p/session/page",
            "https://checkout.stripe.test/c/pay/cs_test_page_topup"
        ]
    );

    // The former subscriber sees Free and picks a plan: a subscription checkout.
    let former = &report["former"];
    assert_eq!(former["state"], "ready", "{former}");
    assert_eq!(former["tier"], "Free");
    assert_eq!(former["access"], "No");
    let stored: String =
        sqlx::query_scalar("SELECT access_status FROM customers WHERE user_id = 'user_former'")
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(former["statusKey"], stored.as_str());
    assert_eq!(former["subscription"]["status"], "Canceled");
    assert_eq!(former["upgradeShown"], true);
    assert_eq!(former["changePlanShown"], false);
    let names: Vec<&str> = former["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "Pro monthly",
            "Pro yearly",
            "Pro Plus monthly",
            "Enterprise yearly"
        ]
    );
    assert_eq!(
        former["upgrade"],
        "https://checkout.stripe.test/c/pay/cs_test_former_pro"
    );
    assert!(
        former["consoleErrors"].as_array().unwrap().is_empty(),
        "{}",
        former["consoleErrors"]
    );
    let checkouts = api.stand_in.requests_to("POST", "/v1/checkout/sessions");
    assert_eq!(checkouts.len(), 2);
    let (topup, upgrade) = (&checkouts[0], &checkouts[1]);
    assert_eq!(topup.form_value("mode").as_deref(), Some("payment"));
    assert_eq!(
        topup.form_value("client_reference_id").as_deref(),
        Some("user_page")
    );
    assert_eq!(topup.form_value("customer").as_deref(), Some("cus_page"));
    assert_eq!(
        topup.form_value("metadata[credits]").as_deref(),
        Some("500")
    );
    assert_eq!(upgrade.form_value("mode").as_deref(), Some("subscription"));
    assert_eq!(
        upgrade.form_value("client_reference_id").as_deref(),
        Some("user_former")
    );
    assert_eq!(
        upgrade.form_value("line_items[0][price]").as_deref(),
        Some("price_pro_monthly")
    );
    assert!(
        api.stand_in.requests_to("POST", "/v1/customers").is_empty(),
        "both users had a Stripe customer already"
    );

    // An expired token: the sign-in-again message, nothing of the account, token dropped.
    let expired = &report["expired"];
    assert_eq!(expired["state"], "error", "{expired}");
    assert_eq!(expired["kind"], "unauthenticated");
    assert_eq!(
        expired["message"],
        "Your session has expired or is not valid. Please sign in again."
    );
    assert_eq!(expired["accountShown"], false);
    assert_eq!(expired["storedToken"], Value::Null);
    assert_eq!(report["signedOut"]["state"], "signed-out");
    assert_eq!(
        report["signedOut"]["message"],
        "Sign in to see your billing."
    );

    // Past the API's rate limit (30 a minute per user; four calls a load).
    let busy = &report["busy"];
    assert_eq!(busy["state"], "error", "{busy}");
    assert_eq!(busy["kind"], "rate_limited");
    assert!(
        busy["message"]
            .as_str()
            .unwrap()
            .starts_with("Too many requests. Please try again in "),
        "{busy}"
    );
    assert!(busy["loads"].as_u64().unwrap() >= 8, "{busy}");
}
