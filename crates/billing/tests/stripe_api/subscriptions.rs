//! The Customer Portal and subscription changes: upgrade and downgrade with proration,
//! cancel at period end, cancel now.

use serde_json::{Value, json};
use tollgate_billing::account::{AccountError, CancelAt};
use tollgate_stripe::operations::Proration;
use tollgate_test_support::{Reply, stripe_object, subscription_object};

use crate::helpers::*;

const ITEM: &str = "si_QXhVnC2h0Jczwc";

/// A subscriber: customer `cus_sub` of `user_sub` on Pro monthly, as billing and Stripe
/// both have it.
async fn subscriber() -> Harness {
    let h = Harness::start().await;
    h.linked_customer("cus_sub", "user_sub").await;
    h.stored_subscription("sub_live", "cus_sub", "active", "price_pro_monthly")
        .await;
    h.stand_in.put_object(
        "subscriptions",
        &subscription_object("sub_live", "cus_sub", "active", "price_pro_monthly"),
    );
    h
}

fn on_price(price: &str) -> Value {
    subscription_object("sub_live", "cus_sub", "active", price)
}

#[tokio::test]
async fn the_portal_opens_for_a_customer_and_returns_to_the_configured_page() {
    let h = subscriber().await;
    h.stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::object(&stripe_object("billing_portal.session")),
    );
    let portal = h.account().portal("user_sub", None).await.unwrap();
    assert!(portal.url.starts_with("https://"), "{}", portal.url);
    assert_eq!(portal.stripe_customer_id, "cus_sub");
    let request = h.posts().pop().unwrap();
    assert_eq!(request.path, "/v1/billing_portal/sessions");
    assert_stripe_headers(&request);
    assert_eq!(
        request.form(),
        [
            ("customer".to_string(), "cus_sub".to_string()),
            ("return_url".to_string(), RETURN_URL.to_string()),
        ]
    );

    // No Stripe customer yet: nothing to manage, and Stripe is not asked.
    let none = h.account().portal("user_unknown", None).await.unwrap_err();
    assert!(matches!(none, AccountError::NoSuchCustomer));
    assert_eq!(none.status(), 404);
    // Stripe no longer knows the customer.
    h.stand_in.reply(
        "POST",
        "/v1/billing_portal/sessions",
        Reply::json(
            400,
            &json!({ "error": { "type": "invalid_request_error", "code": "resource_missing",
                "param": "customer", "message": "No such customer: 'cus_sub'" } }),
        ),
    );
    let gone = h.account().portal("user_sub", None).await.unwrap_err();
    assert!(matches!(gone, AccountError::NoSuchCustomer), "{gone}");
    assert_eq!(h.posts().len(), 2);
}

#[tokio::test]
async fn an_upgrade_moves_the_one_item_to_the_new_price_with_proration() {
    let h = subscriber().await;
    h.stand_in.reply(
        "POST",
        "/v1/subscriptions/sub_live",
        Reply::object(&on_price("price_pro_plus_monthly")),
    );
    let state = h
        .account()
        .change_plan(
            "user_sub",
            "pro_plus_monthly",
            Proration::CreateProrations,
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(state.plan.as_deref(), Some("pro_plus_monthly"));
    assert_eq!(state.price_id.as_deref(), Some("price_pro_plus_monthly"));
    assert_eq!(state.status, "active");

    // Read from Stripe first (the item id is Stripe's), then changed.
    let requests = h.stand_in.requests();
    let calls: Vec<(&str, &str)> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.path.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("GET", "/v1/subscriptions/sub_live"),
            ("POST", "/v1/subscriptions/sub_live")
        ]
    );
    requests.iter().for_each(assert_stripe_headers);
    assert_eq!(
        requests[1].form(),
        [
            ("items[0][id]".to_string(), ITEM.to_string()),
            (
                "items[0][price]".to_string(),
                "price_pro_plus_monthly".to_string()
            ),
            (
                "proration_behavior".to_string(),
                "create_prorations".to_string()
            ),
        ]
    );

    // A retried click sends the same key; a downgrade without proration is another intent.
    h.account()
        .change_plan(
            "user_sub",
            "pro_plus_monthly",
            Proration::CreateProrations,
            None,
            None,
        )
        .await
        .unwrap();
    let posts = h.posts();
    assert_eq!(
        posts[0].header("idempotency-key"),
        posts[1].header("idempotency-key")
    );
    h.stand_in
        .put_object("subscriptions", &on_price("price_pro_plus_monthly"));
    h.stand_in.reply(
        "POST",
        "/v1/subscriptions/sub_live",
        Reply::object(&on_price("price_pro_monthly")),
    );
    let down = h
        .account()
        .change_plan("user_sub", "pro_monthly", Proration::None, None, None)
        .await
        .unwrap();
    assert_eq!(down.plan.as_deref(), Some("pro_monthly"));
    let downgrade = h.posts().pop().unwrap();
    assert_eq!(
        downgrade.form_value("proration_behavior").as_deref(),
        Some("none")
    );
    assert_ne!(
        downgrade.header("idempotency-key"),
        posts[0].header("idempotency-key")
    );

    // Already there: nothing sent.
    h.stand_in
        .put_object("subscriptions", &on_price("price_pro_monthly"));
    let same = h
        .account()
        .change_plan("user_sub", "pro_monthly", Proration::None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(same, AccountError::AlreadyOnPlan(_)), "{same}");
    assert_eq!(h.posts().len(), 3);
    let unknown = h
        .account()
        .change_plan("user_sub", "platinum", Proration::None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(unknown, AccountError::UnknownPlan(_)));
}

#[tokio::test]
async fn cancelling_at_period_end_then_now() {
    let h = subscriber().await;
    let mut cancelling = on_price("price_pro_monthly");
    cancelling["cancel_at_period_end"] = true.into();
    h.stand_in.reply(
        "POST",
        "/v1/subscriptions/sub_live",
        Reply::object(&cancelling),
    );
    let state = h
        .account()
        .cancel("user_sub", CancelAt::PeriodEnd, None, None)
        .await
        .unwrap();
    assert!(state.cancel_at_period_end);
    assert_eq!(state.status, "active", "access stays until the period ends");
    let post = h.posts().pop().unwrap();
    assert_stripe_headers(&post);
    assert_eq!(
        post.form(),
        [("cancel_at_period_end".to_string(), "true".to_string())]
    );

    // Stripe says it is already cancelling: nothing more to send.
    h.stand_in.put_object("subscriptions", &cancelling);
    let again = h
        .account()
        .cancel("user_sub", CancelAt::PeriodEnd, None, None)
        .await
        .unwrap();
    assert!(again.cancel_at_period_end);
    assert_eq!(h.posts().len(), 1);

    // Now: DELETE, with Stripe's options as a query.
    let mut canceled = on_price("price_pro_monthly");
    canceled["status"] = "canceled".into();
    h.stand_in.reply(
        "DELETE",
        "/v1/subscriptions/sub_live",
        Reply::object(&canceled),
    );
    let now = h
        .account()
        .cancel(
            "user_sub",
            CancelAt::Now {
                prorate: true,
                invoice_now: false,
            },
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(now.status, "canceled");
    let delete = h
        .stand_in
        .requests_to("DELETE", "/v1/subscriptions/sub_live")
        .pop()
        .unwrap();
    assert_stripe_headers(&delete);
    assert_eq!(delete.query.as_deref(), Some("prorate=true"));
    assert!(delete.body.is_empty());
}

#[tokio::test]
async fn only_the_user_s_own_live_subscription_is_changed() {
    let h = subscriber().await;
    h.linked_customer("cus_other", "user_other").await;
    h.stored_subscription("sub_other", "cus_other", "active", "price_pro_monthly")
        .await;
    // Naming someone else's subscription reads as "no such subscription".
    let theirs = h
        .account()
        .cancel("user_sub", CancelAt::PeriodEnd, Some("sub_other"), None)
        .await
        .unwrap_err();
    assert!(matches!(theirs, AccountError::NoSubscription), "{theirs}");
    assert_eq!(theirs.status(), 404);
    // A user without one.
    let none = h
        .account()
        .cancel("user_nobody", CancelAt::PeriodEnd, None, None)
        .await
        .unwrap_err();
    assert!(matches!(none, AccountError::NoSubscription));
    assert!(h.stand_in.requests().is_empty(), "Stripe is never asked");

    // Billing's copy says live, Stripe says it belongs to another customer: refused.
    h.stand_in.put_object(
        "subscriptions",
        &subscription_object("sub_live", "cus_other", "active", "price_pro_monthly"),
    );
    let moved = h
        .account()
        .change_plan("user_sub", "pro_yearly", Proration::None, None, None)
        .await
        .unwrap_err();
    assert!(matches!(moved, AccountError::NoSubscription), "{moved}");
    assert!(h.posts().is_empty());

    // Two live subscriptions: the caller must name one.
    h.stored_subscription("sub_second", "cus_sub", "trialing", "price_pro_yearly")
        .await;
    let several = h
        .account()
        .cancel("user_sub", CancelAt::PeriodEnd, None, None)
        .await
        .unwrap_err();
    assert!(matches!(several, AccountError::SeveralSubscriptions));
}
