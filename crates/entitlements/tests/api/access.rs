//! The access rules, answered over gRPC from PostgreSQL state and the plans file.

use std::time::Duration;

use chrono::Utc;
use tollgate_entitlements::test_users::{self, RuleKind};
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::Reason;
use tonic::Code;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reason_code_of_a_check() {
    let mut app = spawn_app(Options::default()).await;
    for (user, status, tier) in [
        ("u_active", "active", "pro"),
        ("u_trialing", "trialing", "pro_plus"),
        ("u_failed", "payment_failed", "free"),
        ("u_past_due", "past_due", "free"),
        ("u_unpaid", "unpaid", "free"),
        ("u_canceled", "canceled", "free"),
        ("u_disputed", "disputed", "free"),
        ("u_none", "none", "free"),
    ] {
        app.seed(Seed {
            user_id: user,
            email: &format!("{user}@example.com"),
            status,
            tier,
            features: &[],
        })
        .await;
    }
    let cases = [
        ("u_active", "scripts.download", true, Reason::Ok),
        ("u_trialing", "api.priority", true, Reason::Ok),
        ("u_active", "sso", false, Reason::NotInTier),
        ("u_failed", "scripts.download", false, Reason::PaymentFailed),
        ("u_past_due", "scripts.download", false, Reason::PastDue),
        ("u_unpaid", "scripts.download", false, Reason::Unpaid),
        ("u_canceled", "scripts.download", false, Reason::Cancelled),
        ("u_disputed", "scripts.download", false, Reason::Disputed),
        ("u_none", "scripts.download", false, Reason::NotSubscribed),
        ("u_failed", "docs.read", true, Reason::Ok),
        ("nobody", "docs.read", false, Reason::UnknownSubject),
        ("u_active", "no.such.feature", false, Reason::UnknownFeature),
        // By email, in any case.
        ("U_Active@Example.com", "exports.csv", true, Reason::Ok),
    ];
    for (subject, feature, allowed, expected) in cases {
        let answer = app.check(subject, feature).await;
        assert_eq!(
            (answer.allowed, reason(answer.reason)),
            (allowed, expected),
            "{subject} {feature}: {answer:?}"
        );
        assert!(!answer.degraded);
    }
    let answer = app.check("u_failed", "scripts.download").await;
    assert_eq!(
        (answer.status.as_str(), answer.tier.as_str()),
        ("payment_failed", "free")
    );
    let unknown = app.check("nobody@example.com", "docs.read").await;
    assert_eq!(unknown.status, "unknown");

    // Quotas: Free has 100 api.calls a day.
    for _ in 0..2 {
        let recorded = app
            .client
            .clone()
            .record_usage(service(pb::RecordUsageRequest {
                subject: "u_none".into(),
                feature: "api.calls".into(),
                amount: 50,
                idempotency_key: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(recorded.allowed, "{recorded:?}");
    }
    let exhausted = app.check("u_none", "api.calls").await;
    assert_eq!(
        reason(exhausted.reason),
        Reason::QuotaExhausted,
        "{exhausted:?}"
    );
    let quota = exhausted.quota.unwrap();
    assert_eq!(
        (quota.daily_limit, quota.daily_used, quota.monthly_used),
        (100, 100, 100)
    );
    let refused = app
        .client
        .clone()
        .record_usage(service(pb::RecordUsageRequest {
            subject: "u_none".into(),
            feature: "api.calls".into(),
            amount: 1,
            idempotency_key: "call-1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.allowed);
    assert_eq!(reason(refused.reason), Reason::QuotaExhausted);
    // Pro's own quota is separate and larger.
    let pro = app.check("u_active", "api.calls").await;
    assert!(pro.allowed);
    assert_eq!(pro.quota.unwrap().daily_limit, 5000);
    app.stop().await;
    assert!(
        app.redis.key_count() > 0,
        "usage counted in the test's key prefix"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_with_a_key_counts_once() {
    let mut app = spawn_app(Options::default()).await;
    app.seed(Seed {
        user_id: "u1",
        email: "u1@example.com",
        status: "none",
        tier: "free",
        features: &[],
    })
    .await;
    for attempt in 0..3 {
        let recorded = app
            .client
            .clone()
            .record_usage(service(pb::RecordUsageRequest {
                subject: "u1".into(),
                feature: "api.calls".into(),
                amount: 10,
                idempotency_key: "request-42".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(recorded.allowed);
        assert_eq!(recorded.replayed, attempt > 0);
        assert_eq!(recorded.quota.unwrap().daily_used, 10);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visitor_subscriber_paid_scheme() {
    let mut app = spawn_app(Options {
        plans: "plans.visitor-subscriber-paid.toml",
        ..Options::default()
    })
    .await;
    app.seed(Seed {
        user_id: "visitor",
        email: "v@example.com",
        status: "none",
        tier: "visitor",
        features: &[],
    })
    .await;
    app.seed(Seed {
        user_id: "subscriber",
        email: "s@example.com",
        status: "active",
        tier: "subscriber",
        features: &[],
    })
    .await;
    app.seed(Seed {
        user_id: "paid",
        email: "p@example.com",
        status: "active",
        tier: "paid",
        features: &[],
    })
    .await;
    for (subject, feature, allowed) in [
        ("visitor", "content.public", true),
        ("visitor", "docs.read", false),
        ("subscriber", "docs.read", true),
        ("subscriber", "scripts.download", true),
        ("subscriber", "slack.community", false),
        ("paid", "slack.community", true),
        ("paid", "content.public", true),
    ] {
        let answer = app.check(subject, feature).await;
        assert_eq!(answer.allowed, allowed, "{subject} {feature}: {answer:?}");
    }
    let batch = app
        .client
        .clone()
        .check_batch(service(pb::CheckBatchRequest {
            subject: "s@example.com".into(),
            features: vec![
                "docs.read".into(),
                "slack.community".into(),
                "courses.full".into(),
            ],
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    let allowed: Vec<bool> = batch.decisions.iter().map(|d| d.allowed).collect();
    assert_eq!(allowed, vec![true, false, false]);
    assert_eq!(reason(batch.decisions[1].reason), Reason::NotInTier);
    assert_eq!(batch.tier, "subscriber");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_entitlement_features_grant_until_revoked() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "u_features",
            email: "f@example.com",
            status: "active",
            tier: "free",
            features: &["sso", "beta.widgets"],
        })
        .await;
    assert!(
        app.check("u_features", "sso").await.allowed,
        "tier lacks it, Stripe grants it"
    );
    assert!(
        app.check("u_features", "beta.widgets").await.allowed,
        "undeclared in plans"
    );
    app.change(customer, "payment_failed", "free").await;
    eventually("revoked", Duration::from_secs(10), || async {
        reason(app.check("u_features", "sso").await.reason) == Reason::PaymentFailed
    })
    .await;
    let entitlements = app
        .client
        .clone()
        .get_entitlements(service(pb::GetEntitlementsRequest {
            subject: "u_features".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entitlements.stripe_features, vec!["sso", "beta.widgets"]);
    assert!(!entitlements.features.contains(&"sso".to_string()));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcement_off_allows_everything_and_says_so() {
    let mut app = spawn_app(Options {
        enforcement: false,
        ..Options::default()
    })
    .await;
    app.seed(Seed {
        user_id: "u_failed",
        email: "x@example.com",
        status: "payment_failed",
        tier: "free",
        features: &[],
    })
    .await;
    for subject in ["u_failed", "stranger"] {
        let answer = app.check(subject, "sso").await;
        assert!(answer.allowed);
        assert_eq!(reason(answer.reason), Reason::EnforcementDisabled);
    }
    let entitlements = app
        .client
        .clone()
        .get_entitlements(service(pb::GetEntitlementsRequest {
            subject: "u_failed".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!entitlements.enforcement_enabled);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_users_by_list_and_domain_until_they_expire() {
    let mut app = spawn_app(Options::default()).await;
    app.seed(Seed {
        user_id: "qa_member",
        email: "member@qa.example.org",
        status: "none",
        tier: "free",
        features: &[],
    })
    .await;
    let soon = Utc::now() + chrono::Duration::seconds(2);
    let later = Utc::now() + chrono::Duration::hours(1);
    test_users::grant(
        &app.pool,
        RuleKind::UserId,
        "qa_list",
        None,
        later,
        "ops@example.com",
        "QA account",
    )
    .await
    .unwrap();
    test_users::grant(
        &app.pool,
        RuleKind::EmailDomain,
        "qa.example.org",
        Some("pro"),
        later,
        "ops@example.com",
        "QA domain",
    )
    .await
    .unwrap();
    let brief = test_users::grant(
        &app.pool,
        RuleKind::Email,
        "Brief@Example.com",
        None,
        soon,
        "ops@example.com",
        "demo",
    )
    .await
    .unwrap();

    eventually("rules loaded", Duration::from_secs(10), || async {
        app.check("qa_list", "sso").await.allowed
    })
    .await;
    let listed = app.check("qa_list", "sso").await;
    assert!(listed.test_user);
    assert_eq!(listed.tier, "enterprise", "the top tier by default");
    // A customer matches through its email; the rule's tier applies.
    let member = app.check("qa_member", "scripts.download").await;
    assert!(member.allowed && member.test_user, "{member:?}");
    assert!(
        !app.check("qa_member", "sso").await.allowed,
        "pro has no sso"
    );
    assert!(
        app.check("someone@qa.example.org", "exports.csv")
            .await
            .allowed,
        "not a customer yet"
    );
    assert!(
        !app.check("someone@evilqa.example.org", "exports.csv")
            .await
            .test_user
    );
    assert!(app.check("brief@example.com", "sso").await.allowed);
    let entitlements = app
        .client
        .clone()
        .get_entitlements(service(pb::GetEntitlementsRequest {
            subject: "qa_list".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(entitlements.test_user && entitlements.test_user_until.is_some());

    // Expiry ends it by itself; revoking ends it early; the rows stay as the audit trail.
    eventually("expired", Duration::from_secs(10), || async {
        !app.check("brief@example.com", "sso").await.allowed
    })
    .await;
    let rule: i64 = sqlx::query_scalar("SELECT id FROM test_users WHERE kind = 'user_id'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        test_users::revoke(&app.pool, rule, "ops@example.com")
            .await
            .unwrap()
    );
    eventually("revoked", Duration::from_secs(10), || async {
        !app.check("qa_list", "sso").await.allowed
    })
    .await;
    let audit: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT granted_by, reason, revoked_by FROM test_users ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audit.len(), 3);
    assert_eq!(audit[0].2.as_deref(), Some("ops@example.com"));
    assert_eq!(brief, 3);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_entitlements_summarises_the_subscription_and_credits() {
    let mut app = spawn_app(Options::default()).await;
    let customer = app
        .seed(Seed {
            user_id: "u_sum",
            email: "sum@example.com",
            status: "active",
            tier: "pro",
            features: &[],
        })
        .await;
    app.set_balance(customer, 42).await;
    sqlx::query(
        "INSERT INTO subscriptions (stripe_subscription_id, stripe_customer_id, status, price_id, tier, plan, billing_interval,
                                    current_period_end, cancel_at_period_end, snapshot_created, snapshot_rank, snapshot_event_id)
         VALUES ('sub_sum', 'cus_u_sum', 'active', 'price_pro_monthly', 'pro', 'Pro monthly', 'month',
                 now() + interval '20 days', false, 1, 1, 'evt_1')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO invoices (stripe_invoice_id, stripe_customer_id, stripe_subscription_id, status, currency, amount_due,
                               amount_paid, amount_remaining, attempted, invoice_created, paid_at, snapshot_created,
                               snapshot_rank, snapshot_event_id)
         VALUES ('in_sum', 'cus_u_sum', 'sub_sum', 'paid', 'usd', 900, 900, 0, true, 1, now() - interval '10 days', 1, 1, 'evt_2')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let e = app
        .client
        .clone()
        .get_entitlements(service(pb::GetEntitlementsRequest {
            subject: "sum@example.com".into(),
            at_least_version: 0,
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(e.known);
    assert_eq!(
        (
            e.user_id.as_str(),
            e.tier.as_str(),
            e.tier_name.as_str(),
            e.status.as_str()
        ),
        ("u_sum", "pro", "Pro", "active")
    );
    assert_eq!(e.credit_balance, 42);
    assert!(
        e.features.contains(&"scripts.download".to_string())
            && e.features.contains(&"docs.read".to_string())
    );
    let calls = e
        .quotas
        .iter()
        .find(|q| q.feature == "api.calls")
        .unwrap()
        .quota
        .unwrap();
    assert_eq!((calls.daily_limit, calls.monthly_limit), (5000, 100_000));
    let sub = e.subscription.unwrap();
    assert_eq!(
        (
            sub.plan.as_str(),
            sub.billing_interval.as_str(),
            sub.payment_status.as_str()
        ),
        ("Pro monthly", "month", "paid")
    );
    assert!(
        sub.next_billing_date.is_some()
            && sub.last_payment_date.is_some()
            && !sub.cancel_at_period_end
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_are_named() {
    let mut app = spawn_app(Options::default()).await;
    let mut client = app.client.clone();
    for (subject, feature, expected) in [
        ("", "docs.read", "subject is required"),
        ("a@", "docs.read", "not a valid email"),
        ("u1", "", "feature is required"),
    ] {
        let status = client
            .check(service(pb::CheckRequest {
                subject: subject.into(),
                feature: feature.into(),
                at_least_version: 0,
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(expected), "{}", status.message());
        assert_eq!(
            status.metadata().get("x-tollgate-error").unwrap(),
            "invalid_argument"
        );
    }
    let status = client
        .consume_credits(service(pb::ConsumeCreditsRequest {
            subject: "u1".into(),
            amount: 0,
            idempotency_key: "k".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    app.stop().await;
}
