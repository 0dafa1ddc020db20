//! Watch: changes as they are committed; resuming from a version misses nothing.

use std::time::Duration;

use futures_util::StreamExt;
use tollgate_proto::entitlements::v1 as pb;

use crate::helpers::*;

async fn next(stream: &mut tonic::Streaming<pb::EntitlementChange>) -> pb::EntitlementChange {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a change arrives")
        .expect("stream open")
        .expect("not an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_receive_changes_and_resume_without_missing_any() {
    let mut app = spawn_app(Options::default()).await;
    let a = app
        .seed(Seed {
            user_id: "w_a",
            email: "a@example.com",
            status: "none",
            tier: "free",
            features: &[],
        })
        .await;
    let b = app
        .seed(Seed {
            user_id: "w_b",
            email: "b@example.com",
            status: "none",
            tier: "free",
            features: &[],
        })
        .await;
    let mut all = app
        .client
        .clone()
        .watch(service(pb::WatchRequest {
            subject: String::new(),
            from_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut only_a = app
        .client
        .clone()
        .watch(service(pb::WatchRequest {
            subject: "w_a".into(),
            from_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    app.change(a, "active", "pro").await;
    app.change(b, "active", "pro").await;
    let first = next(&mut all).await;
    let second = next(&mut all).await;
    assert_eq!(
        (
            first.user_id.as_str(),
            first.status.as_str(),
            first.tier.as_str()
        ),
        ("w_a", "active", "pro")
    );
    assert_eq!(second.user_id, "w_b");
    assert!(second.version > first.version);
    assert_eq!(next(&mut only_a).await.version, first.version);

    // The watcher goes away after `first`; meanwhile more changes are committed.
    drop(all);
    app.change(a, "payment_failed", "free").await;
    app.change(b, "canceled", "free").await;
    let last = app.latest_version().await;
    let mut resumed = app
        .client
        .clone()
        .watch(service(pb::WatchRequest {
            subject: String::new(),
            from_version: first.version,
        }))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.last().is_none_or(|v| *v < last) {
        let change = next(&mut resumed).await;
        seen.push(change.version);
    }
    let expected: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM entitlement_outbox WHERE id > $1 ORDER BY id")
            .bind(first.version)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        seen, expected,
        "every change after the resume point, once, in order"
    );
    assert_eq!(next(&mut only_a).await.status, "payment_failed");
    // And live ones keep coming on the resumed stream.
    app.change(a, "active", "pro").await;
    assert_eq!(next(&mut resumed).await.user_id, "w_a");
    app.stop().await;
}
