//! `tollgate reconcile` and `tollgate backfill` as an operator runs them: the binary, its
//! environment, its report and exit status (against a migrated database and the Stripe
//! stand-in).

use std::process::Output;

use serde_json::{Value, json};
use tollgate_billing::db::MIGRATOR;
use tollgate_test_support::{
    StripeStandIn, TestDatabase, stripe_object, subscription_object, unix_now,
};

struct Setup {
    db: TestDatabase,
    stand_in: StripeStandIn,
}

impl Setup {
    async fn start() -> Self {
        let db = TestDatabase::create().await;
        MIGRATOR.run(&db.pool().await).await.unwrap();
        Self {
            db,
            stand_in: StripeStandIn::start().await,
        }
    }

    async fn run(&self, command: &str, with_key: bool) -> (i32, String, String) {
        let mut cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cli.arg(command)
            .env_clear()
            .env("DATABASE_URL", self.db.url())
            .env("STRIPE_API_BASE", self.stand_in.api_base())
            .env(
                "TOLLGATE_PLANS",
                format!(
                    "{}/config/plans.toml",
                    tollgate_test_support::workspace_root().display()
                ),
            );
        if with_key {
            cli.env("STRIPE_SECRET_KEY", "sk_test_tollgate_cli");
        }
        let Output {
            status,
            stdout,
            stderr,
        } = cli.output().await.unwrap();
        (
            status.code().unwrap_or(-1),
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        )
    }
}

fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    let mut event = stripe_object("event");
    event["id"] = id.into();
    event["type"] = event_type.into();
    event["created"] = created.into();
    event["data"] = json!({ "object": object });
    event
}

#[tokio::test]
async fn reconcile_and_backfill_report_and_say_when_attention_is_needed() {
    let setup = Setup::start().await;
    let now = unix_now();
    setup.stand_in.put_list(
        "events",
        vec![event(
            "evt_cli_1",
            "customer.subscription.created",
            now - 600,
            subscription_object("sub_cli", "cus_cli", "active", "price_pro_monthly"),
        )],
    );
    let (code, stdout, stderr) = setup.run("reconcile", true).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("listed 1 in 1 pages: 1 applied"),
        "{stdout}"
    );
    assert!(stdout.contains("Stripe keeps 30 days"), "{stdout}");

    let (code, stdout, _) = setup.run("reconcile", true).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("from evt_cli_1"), "{stdout}");
    assert!(
        stdout.contains("listed 0 in 1 pages: 0 applied"),
        "{stdout}"
    );

    // A cursor older than Stripe keeps events: done, but exit 2 with the warning.
    let pool = setup.db.pool().await;
    sqlx::query("UPDATE reconcile_cursors SET event_created = $1")
        .bind(now - 45 * 86_400)
        .execute(&pool)
        .await
        .unwrap();
    let (code, stdout, stderr) = setup.run("reconcile", true).await;
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("older than Stripe's 30-day event retention"),
        "{stdout}"
    );
    assert!(stderr.contains("see the warnings"), "{stderr}");

    let mut customer = stripe_object("customer");
    customer["id"] = "cus_cli".into();
    customer["discount"] = Value::Null;
    setup.stand_in.put_list("customers", vec![customer]);
    setup.stand_in.put_list(
        "subscriptions",
        vec![subscription_object(
            "sub_cli",
            "cus_cli",
            "active",
            "price_pro_plus_monthly",
        )],
    );
    let (code, stdout, stderr) = setup.run("backfill", true).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("customers\n  listed 1 in 1 pages: 1 applied"),
        "{stdout}"
    );
    let tier: String =
        sqlx::query_scalar("SELECT tier FROM customers WHERE stripe_customer_id = 'cus_cli'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(tier, "pro_plus");

    // Without a key nothing is asked of Stripe.
    let before = setup.stand_in.requests().len();
    let (code, _, stderr) = setup.run("backfill", false).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("STRIPE_SECRET_KEY"), "{stderr}");
    assert_eq!(setup.stand_in.requests().len(), before);
}
