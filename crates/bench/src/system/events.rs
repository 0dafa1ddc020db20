//! Stripe event bodies for the planned events: real payloads (tests/fixtures/stripe)
//! read once and made ours, with ids derived from the run, the customer and the
//! object's number, so a retry or a duplicate delivery sends the very same event.

use serde_json::{Value, json};
use tollgate_test_support::{invoice_object, stripe_fixture, stripe_object, subscription_object};

use super::model::{Effect, PRICES, Planned};

/// Names of one run's Stripe objects.
#[derive(Clone)]
pub struct Names {
    pub run: String,
}

impl Names {
    pub fn customer(&self, c: u32) -> String {
        format!("cus_{}_{c}", self.run)
    }

    /// The customer number of one of our Stripe customer ids.
    pub fn customer_index(&self, stripe_customer_id: &str) -> Option<u32> {
        stripe_customer_id
            .strip_prefix("cus_")?
            .strip_prefix(self.run.as_str())?
            .strip_prefix('_')?
            .parse()
            .ok()
    }

    pub fn user(&self, c: u32) -> String {
        format!("user_{}_{c}", self.run)
    }

    pub fn subscription(&self, c: u32, sub: u32) -> String {
        format!("sub_{}_{c}_{sub}", self.run)
    }

    pub fn invoice(&self, c: u32, invoice: u32) -> String {
        format!("in_{}_{c}_{invoice}", self.run)
    }

    pub fn event(&self, c: u32, n: u32) -> String {
        format!("evt_{}_{c}_{n}", self.run)
    }
}

/// The payloads every body starts from.
pub struct Templates {
    envelope: Value,
    customer: Value,
    subscription: Value,
    invoice_paid: Value,
    invoice_open: Value,
    subscription_session: Value,
    payment_session: Value,
    payment_method: Value,
}

impl Templates {
    pub fn load() -> Self {
        let fixture = |path: &str| -> Value {
            serde_json::from_slice(&stripe_fixture(path)).expect("fixture is JSON")
        };
        let mut envelope = fixture("complete/invoice.paid.stripe-sync-engine.json");
        envelope["livemode"] = false.into();
        envelope["data"] = Value::Null;
        Self {
            envelope,
            customer: stripe_object("customer"),
            subscription: subscription_object("sub", "cus", "active", PRICES[0]),
            invoice_paid: invoice_object("in", "cus", "sub", "paid", 0),
            invoice_open: invoice_object("in", "cus", "sub", "open", 0),
            subscription_session: fixture(
                "data-only/checkout.session.completed.subscription_mode.data-only.pay-rails.json",
            )["object"]
                .clone(),
            payment_session: fixture(
                "complete/checkout.session.completed.payment_mode.stripe-sync-engine.json",
            )["data"]["object"]
                .clone(),
            payment_method: fixture("complete/payment_method.attached.stripe-sync-engine.json")
                ["data"]["object"]
                .clone(),
        }
    }

    /// The JSON body of event `id`, customer `c`'s `planned` event.
    pub fn body(&self, names: &Names, c: u32, id: &str, planned: &Planned) -> Vec<u8> {
        let customer = names.customer(c);
        let user = names.user(c);
        let email = format!("{user}@example.com");
        let object = match &planned.effect {
            Effect::Customer => {
                let mut o = self.customer.clone();
                o["id"] = customer.into();
                o["email"] = email.into();
                o["metadata"] = json!({ "user_id": user });
                o["created"] = planned.created.into();
                o
            }
            Effect::PaymentMethod { pm } => {
                let mut o = self.payment_method.clone();
                o["id"] = format!("pm_{}_{c}_{pm}", names.run).into();
                o["customer"] = customer.into();
                o["created"] = planned.created.into();
                o
            }
            Effect::Checkout { sub } => {
                let mut o = self.subscription_session.clone();
                o["id"] = format!("cs_{}_{c}_s{sub}", names.run).into();
                o["customer"] = customer.into();
                o["client_reference_id"] = user.into();
                o["customer_details"]["email"] = email.into();
                o["subscription"] = names.subscription(c, *sub).into();
                o["payment_status"] = "paid".into();
                o["mode"] = "subscription".into();
                o
            }
            Effect::Subscription {
                sub, status, price, ..
            } => {
                let id = names.subscription(c, *sub);
                let mut o = self.subscription.clone();
                o["id"] = id.clone().into();
                o["customer"] = customer.into();
                o["status"] = (*status).into();
                let item = &mut o["items"]["data"][0];
                item["subscription"] = id.into();
                item["price"]["id"] = (*price).into();
                item["plan"]["id"] = (*price).into();
                o
            }
            Effect::Invoice {
                invoice,
                sub,
                invoice_created,
                paid,
                ..
            } => {
                let mut o = if *paid {
                    self.invoice_paid.clone()
                } else {
                    self.invoice_open.clone()
                };
                o["id"] = names.invoice(c, *invoice).into();
                o["customer"] = customer.into();
                o["customer_email"] = email.into();
                o["parent"]["subscription_details"]["subscription"] =
                    names.subscription(c, *sub).into();
                o["created"] = (*invoice_created).into();
                if *paid {
                    o["status_transitions"]["paid_at"] = planned.created.into();
                }
                o
            }
            Effect::Topup { session, credits } => {
                let id = format!("cs_{}_{c}_t{session}", names.run);
                let mut o = self.payment_session.clone();
                o["customer"] = customer.into();
                o["client_reference_id"] = user.into();
                o["customer_details"]["email"] = email.into();
                o["metadata"] = json!({ "credits": credits.to_string() });
                o["payment_status"] = "paid".into();
                o["payment_intent"] = format!("pi_{id}").into();
                o["livemode"] = false.into();
                o["id"] = id.into();
                o
            }
        };
        let mut event = self.envelope.clone();
        event["id"] = id.into();
        event["type"] = planned.event_type.into();
        event["created"] = planned.created.into();
        event["data"] = json!({ "object": object });
        serde_json::to_vec(&event).expect("serialisable")
    }
}
