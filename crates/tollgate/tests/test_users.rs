//! `tollgate test-users`: grant, list and revoke, with the audit trail kept.

use tollgate_test_support::TestDatabase;

fn args(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_list_and_revoke_keep_who_and_why() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    tollgate_billing::db::MIGRATOR.run(&pool).await.unwrap();
    let grant = |line: &str| args(line);
    tollgate::test_users::run(
        &pool,
        &grant("grant --email QA@Example.com --days 3 --reason smoke --by ana"),
    )
    .await
    .unwrap();
    tollgate::test_users::run(
        &pool,
        &grant("grant --domain qa.example.org --days 1 --tier pro --reason team --by ana"),
    )
    .await
    .unwrap();
    let err = tollgate::test_users::run(&pool, &grant("grant --user-id u1 --days 3"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--reason"), "{err}");
    let active = tollgate_entitlements::test_users::list(&pool, false)
        .await
        .unwrap();
    assert_eq!(active.len(), 2);
    let email = active.iter().find(|r| r.kind == "email").unwrap();
    assert_eq!(
        (
            email.value.as_str(),
            email.granted_by.as_str(),
            email.reason.as_str()
        ),
        ("qa@example.com", "ana", "smoke")
    );

    tollgate::test_users::run(&pool, &args(&format!("revoke {} --by ben", email.id)))
        .await
        .unwrap();
    assert!(
        tollgate::test_users::run(&pool, &args(&format!("revoke {}", email.id)))
            .await
            .is_err()
    );
    assert_eq!(
        tollgate_entitlements::test_users::list(&pool, false)
            .await
            .unwrap()
            .len(),
        1
    );
    let all = tollgate_entitlements::test_users::list(&pool, true)
        .await
        .unwrap();
    let revoked = all.iter().find(|r| r.id == email.id).unwrap();
    assert_eq!(revoked.revoked_by.as_deref(), Some("ben"));
    tollgate::test_users::run(&pool, &args("list --all"))
        .await
        .unwrap();
    pool.close().await;
}
