//! `/v1/admin`: admin tokens only; credit adjustments through the ledger, the test-user
//! flag (both audited with the admin's id), dead letters, any customer's history.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn admin_endpoints_refuse_users_and_services() {
    let api = spawn_api(Options::default()).await;
    let user = user_token("user_ana", None);
    for token in [user.as_str(), SERVICE_TOKEN] {
        for answer in [
            api.get("/v1/admin/dead-letters", token).await,
            api.post("/v1/admin/dead-letters/1/replay", token, json!({}))
                .await,
            api.post(
                "/v1/admin/credits/adjustments",
                token,
                json!({"user_id": "user_ana", "delta": 5, "reason": "r", "idempotency_key": "k"}),
            )
            .await,
            api.put(
                "/v1/admin/customers/user_ana/test-user",
                token,
                json!({"reason": "r"}),
            )
            .await,
            api.delete("/v1/admin/customers/user_ana/test-user", token, json!({}))
                .await,
            api.get("/v1/admin/customers/user_ana/transactions", token)
                .await,
        ] {
            assert_eq!((answer.status, answer.code()), (403, "forbidden"));
        }
    }
    assert_eq!(
        count(&api.pool, "SELECT count(*) FROM access_audit").await,
        0
    );
}

#[tokio::test]
async fn credit_adjustments_go_through_the_ledger_once_per_key_and_are_audited() {
    let api = spawn_api(Options::default()).await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    let audits_before = count(&api.pool, "SELECT count(*) FROM access_audit").await;
    let outbox_before = count(&api.pool, "SELECT count(*) FROM entitlement_outbox").await;
    let grant = json!({"user_id": "user_ana", "delta": 250, "reason": "support goodwill", "idempotency_key": "ticket-42"});

    let first = api
        .post("/v1/admin/credits/adjustments", ADMIN_TOKEN, grant.clone())
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.body["applied"], true);
    assert_eq!(first.body["balance"], 1130);
    let again = api
        .post("/v1/admin/credits/adjustments", ADMIN_TOKEN, grant)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["applied"], false);
    assert_eq!(again.body["balance"], 1130);
    assert_eq!(
        count(&api.pool, "SELECT count(*) FROM credit_ledger WHERE reason = 'admin_adjustment' AND idempotency_key = 'admin:ticket-42' AND delta = 250").await,
        1
    );
    let status = api
        .get("/v1/billing/status?user_id=user_ana", SERVICE_TOKEN)
        .await;
    assert_eq!(status.body["credits"]["balance"], 1130);

    let (source, admin, notes): (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT trigger_source, admin_id, notes FROM access_audit ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&api.pool)
    .await
    .unwrap();
    assert_eq!(
        (source.as_str(), admin.as_deref()),
        ("admin_action", Some(ADMIN_ID))
    );
    assert!(notes.unwrap().contains("support goodwill"));
    assert_eq!(
        count(&api.pool, "SELECT count(*) FROM access_audit").await,
        audits_before + 1
    );
    assert!(count(&api.pool, "SELECT count(*) FROM entitlement_outbox").await > outbox_before);

    // Refused, changing nothing: the same key for another amount, overdrawing, bad input,
    // an unknown user.
    let cases = [
        (
            json!({"user_id": "user_ana", "delta": 99, "reason": "r", "idempotency_key": "ticket-42"}),
            409,
            "idempotency_conflict",
        ),
        (
            json!({"user_id": "user_ana", "delta": -5000, "reason": "r", "idempotency_key": "k2"}),
            409,
            "insufficient_credits",
        ),
        (
            json!({"user_id": "user_ana", "delta": 0, "reason": "r", "idempotency_key": "k3"}),
            400,
            "invalid_request",
        ),
        (
            json!({"user_id": "user_ana", "delta": 5, "reason": " ", "idempotency_key": "k4"}),
            400,
            "invalid_request",
        ),
        (
            json!({"user_id": "user_ana", "delta": 5, "reason": "r"}),
            400,
            "invalid_request",
        ),
        (
            json!({"user_id": "user_nobody", "delta": 5, "reason": "r", "idempotency_key": "k5"}),
            404,
            "not_found",
        ),
    ];
    for (body, status, code) in cases {
        let answer = api
            .post("/v1/admin/credits/adjustments", ADMIN_TOKEN, body.clone())
            .await;
        assert_eq!((answer.status, answer.code()), (status, code), "{body}");
    }
    assert_eq!(
        count(&api.pool, "SELECT count(*) FROM access_audit").await,
        audits_before + 1
    );
    assert_eq!(
        count(
            &api.pool,
            "SELECT count(*) FROM credit_ledger WHERE reason = 'admin_adjustment'"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn flagging_and_unflagging_a_test_user_is_audited_and_changes_access() {
    let api = spawn_api(Options::default()).await;
    api.customer("cus_qa", "user_qa", "qa@example.test").await;
    let qa = user_token("user_qa", None);
    assert_eq!(
        api.get("/v1/billing/status", &qa).await.body["hasAccess"],
        false
    );

    let flagged = api
        .put(
            "/v1/admin/customers/user_qa/test-user",
            ADMIN_TOKEN,
            json!({"reason": "QA for the launch", "until": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(flagged.status, 200, "{}", flagged.body);
    assert_eq!(flagged.body["changed"], true);
    let status = api.get("/v1/billing/status", &qa).await;
    assert_eq!(status.body["test_user"], true);
    assert_eq!(status.body["hasAccess"], true);
    assert_eq!(status.body["tier"], "enterprise");
    assert_eq!(api.get("/v1/user-auth", &qa).await.body["role"], "paid");
    let by: (bool, Option<String>) =
        sqlx::query_as("SELECT test_user, test_user_by FROM customers WHERE user_id = 'user_qa'")
            .fetch_one(&api.pool)
            .await
            .unwrap();
    assert_eq!(by, (true, Some(ADMIN_ID.to_string())));

    let unflagged = api
        .delete(
            "/v1/admin/customers/user_qa/test-user",
            ADMIN_TOKEN,
            json!({"reason": "launch done"}),
        )
        .await;
    assert_eq!(unflagged.status, 200, "{}", unflagged.body);
    assert_eq!(unflagged.body["changed"], true);
    assert_eq!(
        api.get("/v1/billing/status", &qa).await.body["hasAccess"],
        false
    );
    // Unflagging again changes (and audits) nothing.
    let again = api
        .delete(
            "/v1/admin/customers/user_qa/test-user",
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(again.body["changed"], false);

    let audit: Vec<(String, Option<String>, String)> = sqlx::query_as(
        "SELECT trigger_source, admin_id, COALESCE(notes, '') FROM access_audit ORDER BY id",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(
        audit
            .iter()
            .all(|(s, a, _)| s == "admin_action" && a.as_deref() == Some(ADMIN_ID))
    );
    assert!(audit[0].2.contains("QA for the launch"));
    assert!(audit[1].2.contains("launch done"));
    let announced: Vec<bool> = sqlx::query_scalar(
        "SELECT (payload->>'test_user')::boolean FROM entitlement_outbox WHERE reason = 'test_user' ORDER BY id",
    )
    .fetch_all(&api.pool)
    .await
    .unwrap();
    assert_eq!(announced, [true, false]);

    for (path, body, status) in [
        (
            "/v1/admin/customers/user_nobody/test-user",
            json!({"reason": "r"}),
            404,
        ),
        ("/v1/admin/customers/user_qa/test-user", json!({}), 400),
        (
            "/v1/admin/customers/user_qa/test-user",
            json!({"reason": "r", "until": "2000-01-01T00:00:00Z"}),
            400,
        ),
        (
            "/v1/admin/customers/user_qa/test-user",
            json!({"reason": "r", "until": "tomorrow"}),
            400,
        ),
    ] {
        let answer = api.put(path, ADMIN_TOKEN, body.clone()).await;
        assert_eq!(answer.status, status, "{path} {body}: {}", answer.body);
    }
    assert_eq!(
        count(&api.pool, "SELECT count(*) FROM access_audit").await,
        2
    );
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_onto_billing() {
    let api = spawn_api(Options::default()).await;
    api.customer("cus_dl", "user_dl", "dl@example.test").await;
    let event = event(
        "evt_dead_letter_1",
        "customer.subscription.created",
        1_760_000_010,
        tollgate_test_support::subscription_object(
            "sub_dl",
            "cus_dl",
            "active",
            "price_pro_monthly",
        ),
    );
    let payload = serde_json::to_vec(&event).unwrap();
    // As billing records one it gave up on.
    sqlx::query(
        "INSERT INTO dead_letters (event_id, event_type, routing_key, payload, error, attempts)
         VALUES ('evt_dead_letter_1', 'customer.subscription.created', 'customer.subscription.created',
                 $1, 'the database was down for too long', 6)",
    )
    .bind(&payload)
    .execute(&api.pool)
    .await
    .unwrap();

    let list = api.get("/v1/admin/dead-letters", ADMIN_TOKEN).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let letter = &list.body["data"][0];
    assert_eq!(letter["event_id"], "evt_dead_letter_1");
    assert_eq!(letter["resolution"], "open");
    let id = letter["id"].as_i64().unwrap();

    let replayed = api
        .post(
            &format!("/v1/admin/dead-letters/{id}/replay"),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!(replayed.status, 200, "{}", replayed.body);
    assert_eq!(replayed.body["resolved_by"], ADMIN_ID);
    let again = api
        .post(
            &format!("/v1/admin/dead-letters/{id}/replay"),
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!((again.status, again.code()), (409, "already_resolved"));
    let missing = api
        .post(
            "/v1/admin/dead-letters/999999/replay",
            ADMIN_TOKEN,
            json!({}),
        )
        .await;
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let bad = api
        .post("/v1/admin/dead-letters/abc/replay", ADMIN_TOKEN, json!({}))
        .await;
    assert_eq!((bad.status, bad.code()), (400, "invalid_request"));
    assert_eq!(
        api.get("/v1/admin/dead-letters", ADMIN_TOKEN).await.body["data"],
        json!([])
    );
    let all = api
        .get("/v1/admin/dead-letters?all=true", ADMIN_TOKEN)
        .await;
    assert_eq!(all.body["data"][0]["resolution"], "replayed");

    // The running billing consumer applies the replayed event.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let applied = count(
            &api.pool,
            "SELECT count(*) FROM stripe_events WHERE id = 'evt_dead_letter_1' AND status = 'processed'",
        )
        .await;
        if applied == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replayed event was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = api
        .get("/v1/billing/status?user_id=user_dl", ADMIN_TOKEN)
        .await;
    assert_eq!(status.body["tier"], "pro");
}

#[tokio::test]
async fn admins_read_any_customer_s_transactions() {
    let api = spawn_api(Options::default()).await;
    api.seed_paying("user_ana", "cus_ana", "ana@example.test")
        .await;
    let own = api
        .get("/v1/billing/transactions", &user_token("user_ana", None))
        .await;
    let admin = api
        .get("/v1/admin/customers/user_ana/transactions", ADMIN_TOKEN)
        .await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    assert!(!admin.body["data"].as_array().unwrap().is_empty());
    assert_eq!(admin.body, own.body);
    let page = api
        .get(
            "/v1/admin/customers/user_ana/transactions?limit=500",
            ADMIN_TOKEN,
        )
        .await;
    assert_eq!(page.status, 400);
}
