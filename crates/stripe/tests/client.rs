//! The client and the refetcher against the Stripe stand-in (a real HTTP server).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tollgate_stripe::{
    Fallback, ObjectKind, Outcome, Refetcher, SecretKey, StripeApiError, StripeClient,
    StripeConfig, api_version,
};
use tollgate_test_support::{Reply, StripeStandIn, invoice_object, subscription_object};

const KEY: &str = "sk_test_tollgate_stand_in";

fn client(stand_in: &StripeStandIn, timeout: Duration) -> StripeClient {
    StripeClient::new(&SecretKey::new(KEY).unwrap(), &stand_in.api_base(), timeout).unwrap()
}

#[tokio::test]
async fn retrieves_objects_as_stripe_sent_them_with_the_key_and_the_pinned_version() {
    let stand_in = StripeStandIn::start().await;
    let subscription = subscription_object("sub_raw", "cus_raw", "past_due", "price_pro_monthly");
    let invoice = invoice_object("in_raw", "cus_raw", "sub_raw", "paid", 1_760_000_100);
    stand_in.put_object("subscriptions", &subscription);
    stand_in.put_object("invoices", &invoice);
    // Through the configuration, as a service builds it.
    let config = StripeConfig::from_env(&tollgate_runtime::Env::from_pairs([
        ("STRIPE_SECRET_KEY", KEY.to_string()),
        ("STRIPE_API_BASE", stand_in.api_base()),
    ]))
    .unwrap();
    let client = StripeClient::from_config(&config)
        .unwrap()
        .expect("a key is set");

    assert_eq!(
        client.retrieve_subscription("sub_raw").await.unwrap(),
        subscription
    );
    assert_eq!(client.retrieve_invoice("in_raw").await.unwrap(), invoice);

    let requests = stand_in.requests();
    assert_eq!(
        requests
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str()))
            .collect::<Vec<_>>(),
        [
            ("GET", "/v1/subscriptions/sub_raw"),
            ("GET", "/v1/invoices/in_raw")
        ]
    );
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(request.header("stripe-version"), Some(api_version()));
        assert!(
            request
                .header("user-agent")
                .is_some_and(|ua| ua.contains("tollgate/")),
            "{:?}",
            request.header("user-agent")
        );
        assert!(request.body.is_empty());
    }
    assert_eq!(api_version(), "2026-09-30.endive", "the pinned release");
}

#[tokio::test]
async fn failures_are_classified_and_never_show_the_key() {
    let stand_in = StripeStandIn::start().await;
    let client = client(&stand_in, Duration::from_millis(300));
    stand_in.reply("GET", "/v1/subscriptions/sub_429", Reply::rate_limited());
    stand_in.reply("GET", "/v1/subscriptions/sub_500", Reply::server_error());
    stand_in.reply(
        "GET",
        "/v1/subscriptions/sub_502",
        Reply::text(502, "<html>Bad gateway</html>"),
    );
    stand_in.reply(
        "GET",
        "/v1/subscriptions/sub_slow",
        Reply::object(&subscription_object(
            "sub_slow", "cus_1", "active", "price_1",
        ))
        .delayed(Duration::from_secs(2)),
    );

    let err = |id: &'static str| {
        let client = client.clone();
        async move { client.retrieve_subscription(id).await.unwrap_err() }
    };
    assert_eq!(
        err("sub_missing").await,
        StripeApiError::NotFound("/v1/subscriptions/sub_missing".into())
    );
    assert_eq!(err("sub_429").await, StripeApiError::RateLimited);
    assert_eq!(
        err("sub_slow").await,
        StripeApiError::Timeout(Duration::from_millis(300))
    );
    let server = err("sub_500").await;
    assert!(
        matches!(&server, StripeApiError::Other(m) if m.starts_with("500 api_error")),
        "{server}"
    );
    let gateway = err("sub_502").await;
    assert!(matches!(gateway, StripeApiError::Other(_)), "{gateway}");
    let invalid = err("sub_1/../../customers").await;
    assert!(matches!(invalid, StripeApiError::Other(_)), "{invalid}");
    assert_eq!(
        stand_in.requests().len(),
        5,
        "an invalid id never reaches Stripe"
    );

    // Nothing listening at all.
    let refused = StripeClient::new(
        &SecretKey::new(KEY).unwrap(),
        "http://127.0.0.1:9/",
        Duration::from_secs(2),
    )
    .unwrap()
    .retrieve_invoice("in_1")
    .await
    .unwrap_err();
    assert!(matches!(refused, StripeApiError::Other(_)), "{refused}");

    for error in [server, gateway, refused] {
        assert!(!error.to_string().contains(KEY), "{error}");
    }
    assert!(!format!("{client:?}").contains(KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_refetches_of_one_object_share_one_request() {
    let stand_in = StripeStandIn::start().await;
    let object = subscription_object("sub_flight", "cus_1", "past_due", "price_1");
    stand_in.reply(
        "GET",
        "/v1/subscriptions/sub_flight",
        Reply::object(&object).delayed(Duration::from_millis(500)),
    );
    let refetcher = Arc::new(Refetcher::new(
        Some(client(&stand_in, Duration::from_secs(3))),
        100,
    ));
    let after = UNIX_EPOCH + Duration::from_secs(1_760_000_002);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let refetcher = refetcher.clone();
        calls.spawn(async move {
            refetcher
                .refetch(ObjectKind::Subscription, "sub_flight", after)
                .await
        });
    }
    while let Some(result) = calls.join_next().await {
        assert_eq!(result.unwrap().expect("fetched").object, object);
    }
    assert_eq!(
        stand_in
            .requests_to("GET", "/v1/subscriptions/sub_flight")
            .len(),
        1
    );
    assert_eq!(refetcher.count(Outcome::Fetched), 1);
    assert_eq!(refetcher.count(Outcome::Shared), 19);

    // Once answered, the flight is over: a later refetch asks again.
    refetcher
        .refetch(ObjectKind::Subscription, "sub_flight", after)
        .await
        .unwrap();
    assert_eq!(
        stand_in
            .requests_to("GET", "/v1/subscriptions/sub_flight")
            .len(),
        2
    );
}

#[tokio::test]
async fn an_empty_bucket_falls_back_at_once_without_a_request() {
    let stand_in = StripeStandIn::start().await;
    stand_in.put_object(
        "subscriptions",
        &subscription_object("sub_1", "cus_1", "active", "price_1"),
    );
    let refetcher = Refetcher::new(Some(client(&stand_in, Duration::from_secs(3))), 0);
    let result = refetcher
        .refetch(ObjectKind::Subscription, "sub_1", UNIX_EPOCH)
        .await;
    assert_eq!(result.unwrap_err(), Fallback::Throttled);
    assert_eq!(refetcher.count(Outcome::Fallback(Fallback::Throttled)), 1);
    assert!(stand_in.requests().is_empty());
}

#[tokio::test]
async fn stripe_failures_become_counted_fallbacks() {
    let stand_in = StripeStandIn::start().await;
    stand_in.reply("GET", "/v1/invoices/in_429", Reply::rate_limited());
    stand_in.reply("GET", "/v1/invoices/in_500", Reply::server_error());
    stand_in.reply(
        "GET",
        "/v1/invoices/in_slow",
        Reply::server_error().delayed(Duration::from_secs(2)),
    );
    let refetcher = Refetcher::new(Some(client(&stand_in, Duration::from_millis(200))), 100);
    for (id, fallback) in [
        ("in_missing", Fallback::NotFound),
        ("in_429", Fallback::RateLimited),
        ("in_500", Fallback::Failed),
        ("in_slow", Fallback::Timeout),
    ] {
        let result = refetcher.refetch(ObjectKind::Invoice, id, UNIX_EPOCH).await;
        assert_eq!(result.unwrap_err(), fallback, "{id}");
        assert_eq!(refetcher.count(Outcome::Fallback(fallback)), 1, "{id}");
    }
}

#[tokio::test]
async fn a_refetch_is_not_sent_before_its_moment() {
    let stand_in = StripeStandIn::start().await;
    stand_in.put_object(
        "subscriptions",
        &subscription_object("sub_soon", "cus_1", "active", "price_1"),
    );
    let refetcher = Refetcher::new(Some(client(&stand_in, Duration::from_secs(3))), 100);
    let after = SystemTime::now() + Duration::from_millis(800);
    let fetched = refetcher
        .refetch(ObjectKind::Subscription, "sub_soon", after)
        .await
        .unwrap();
    assert!(fetched.requested_at >= after);
}
