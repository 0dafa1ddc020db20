//! The harness's own account of billing state, computed from the events it sent and
//! nothing else, written from Stripe's semantics and docs/billing-state.md rather
//! than from billing's code: per object the snapshot of the latest event wins
//! (whatever order, however often, they were delivered); access is derived from the
//! subscriptions and their invoices; credits are the sum of distinct top-ups.
//!
//! Also the scripts that generate each customer's Stripe lifecycle: sign-up,
//! checkout, renewals, failed payments and recoveries, plan changes, credit top-ups,
//! payment methods, cancellations and new subscriptions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tollgate_plans::Plans;

/// Stripe prices the scripts subscribe to (ids from config/plans.toml).
pub const PRICES: [&str; 4] = [
    "price_pro_monthly",
    "price_pro_yearly",
    "price_pro_plus_monthly",
    "price_enterprise_yearly",
];
/// Credits a top-up buys (config/plans.toml's packs).
const PACKS: [i64; 4] = [500, 1000, 5000, 10_000];

/// What one event does to a customer's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `customer.created` with `metadata.user_id`: the customer exists, linked.
    Customer,
    /// `payment_method.attached` (the customer's `pm`th): the customer exists
    /// (nothing else we model).
    PaymentMethod { pm: u32 },
    /// A paid subscription-mode `checkout.session.completed`: linked, and the
    /// subscription active on the default tier until a snapshot of it arrives.
    Checkout { sub: u32 },
    /// A `customer.subscription.*` snapshot.
    Subscription {
        sub: u32,
        created: i64,
        status: &'static str,
        price: &'static str,
        tier: &'static str,
    },
    /// An `invoice.*` snapshot of a subscription's invoice: paid, or attempted and open.
    Invoice {
        invoice: u32,
        sub: u32,
        created: i64,
        invoice_created: i64,
        paid: bool,
    },
    /// A paid payment-mode `checkout.session.completed` buying credits: linked.
    Topup { session: u32, credits: i64 },
}

/// One generated event: what it is and what it does; the body is built separately.
#[derive(Debug, Clone)]
pub struct Planned {
    pub event_type: &'static str,
    pub created: i64,
    pub effect: Effect,
}

#[derive(Debug, Clone, Copy)]
struct SubSnapshot {
    created: i64,
    status: &'static str,
    tier: &'static str,
}

#[derive(Debug, Clone, Copy)]
struct InvoiceSnapshot {
    sub: u32,
    created: i64,
    invoice_created: i64,
    paid: bool,
}

/// What the events delivered so far imply for one customer. Applying is
/// order-independent and idempotent, as billing's result must be.
#[derive(Debug, Clone, Default)]
pub struct CustomerModel {
    pub exists: bool,
    pub linked: bool,
    subscriptions: BTreeMap<u32, SubSnapshot>,
    checkouts: BTreeSet<u32>,
    invoices: BTreeMap<u32, InvoiceSnapshot>,
    topups: BTreeMap<u32, i64>,
}

impl CustomerModel {
    pub fn apply(&mut self, effect: &Effect) {
        self.exists = true;
        match *effect {
            Effect::Customer => self.linked = true,
            Effect::PaymentMethod { .. } => {}
            Effect::Checkout { sub } => {
                self.linked = true;
                self.checkouts.insert(sub);
            }
            Effect::Subscription {
                sub,
                created,
                status,
                tier,
                ..
            } => {
                let newer = self
                    .subscriptions
                    .get(&sub)
                    .is_none_or(|s| s.created < created);
                if newer {
                    self.subscriptions.insert(
                        sub,
                        SubSnapshot {
                            created,
                            status,
                            tier,
                        },
                    );
                }
            }
            Effect::Invoice {
                invoice,
                sub,
                created,
                invoice_created,
                paid,
            } => {
                let newer = self
                    .invoices
                    .get(&invoice)
                    .is_none_or(|i| i.created < created);
                if newer {
                    self.invoices.insert(
                        invoice,
                        InvoiceSnapshot {
                            sub,
                            created,
                            invoice_created,
                            paid,
                        },
                    );
                }
            }
            Effect::Topup { session, credits } => {
                self.linked = true;
                self.topups.insert(session, credits);
            }
        }
    }

    pub fn credits(&self) -> i64 {
        self.topups.values().sum()
    }

    pub fn topups(&self) -> usize {
        self.topups.len()
    }

    /// Every subscription's (status, tier): its latest snapshot, or, with only the
    /// checkout seen, active on the default tier.
    pub fn subscriptions(
        &self,
        plans: &'static Plans,
    ) -> BTreeMap<u32, (&'static str, &'static str)> {
        let mut all: BTreeMap<u32, (&'static str, &'static str)> = self
            .checkouts
            .iter()
            .map(|sub| (*sub, ("active", plans.default_tier())))
            .collect();
        for (sub, snapshot) in &self.subscriptions {
            all.insert(*sub, (snapshot.status, snapshot.tier));
        }
        all
    }

    /// Every invoice's outcome: true when paid.
    pub fn invoices(&self) -> BTreeMap<u32, bool> {
        self.invoices.iter().map(|(id, i)| (*id, i.paid)).collect()
    }

    /// A subscription's payment is failing: an attempted, unpaid invoice newer than
    /// its last paid one.
    fn failing(&self, sub: u32) -> bool {
        let of_sub = || self.invoices.values().filter(move |i| i.sub == sub);
        let last_paid = of_sub()
            .filter(|i| i.paid)
            .map(|i| i.invoice_created)
            .max()
            .unwrap_or(0);
        of_sub().any(|i| !i.paid && i.invoice_created > last_paid)
    }

    /// (access status, tier): the best live subscription that is paid up grants its
    /// tier; a live one whose payment fails revokes at once; otherwise the status
    /// that best explains the lack of access, on the default tier.
    pub fn access(&self, plans: &'static Plans) -> (&'static str, &'static str) {
        let free = plans.default_tier();
        let rank = |tier: &str| plans.tier(tier).map_or(0, |t| t.rank);
        let live = |status: &str| status == "active" || status == "trialing";
        let subscriptions = self.subscriptions(plans);
        let granting = subscriptions
            .iter()
            .filter(|(sub, (status, _))| live(status) && !self.failing(**sub))
            .max_by_key(|(_, (status, tier))| (rank(tier), *status == "active"));
        if let Some((_, (status, tier))) = granting {
            return (status, tier);
        }
        if subscriptions.values().any(|(status, _)| live(status)) {
            return ("payment_failed", free);
        }
        for why in ["past_due", "unpaid", "paused", "incomplete", "canceled"] {
            if subscriptions.values().any(|(status, _)| *status == why) {
                return (why, free);
            }
        }
        ("none", free)
    }
}

/// A small deterministic generator (xorshift64*): the same seed replays the same run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// Index of a weight, chosen in proportion to it.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut pick = (self.next_u64() % u64::from(total.max(1))) as u32;
        for (i, w) in weights.iter().enumerate() {
            if pick < *w {
                return i;
            }
            pick -= w;
        }
        weights.len() - 1
    }
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    New,
    Unsubscribed,
    Subscribed {
        sub: u32,
        price: usize,
        past_due: bool,
        /// An invoice whose payment failed and is not paid yet: (id, its created).
        failed: Option<(u32, i64)>,
    },
}

/// One customer's lifecycle as Stripe would report it, one event at a time. Every
/// event of a customer gets its own second, so no two snapshots of one object tie.
pub struct Script {
    clock: i64,
    stage: Stage,
    subs: u32,
    invoices: u32,
    topups: u32,
    payment_methods: u32,
    queue: VecDeque<Planned>,
}

impl Script {
    pub fn new(start: i64) -> Self {
        Self {
            clock: start,
            stage: Stage::New,
            subs: 0,
            invoices: 0,
            topups: 0,
            payment_methods: 0,
            queue: VecDeque::new(),
        }
    }

    pub fn next(&mut self, rng: &mut Rng, plans: &'static Plans) -> Planned {
        if self.queue.is_empty() {
            self.plan_episode(rng, plans);
        }
        self.queue
            .pop_front()
            .expect("an episode plans at least one event")
    }

    fn push(&mut self, event_type: &'static str, effect: impl FnOnce(i64) -> Effect) {
        self.clock += 1 + (self.clock % 3);
        let created = self.clock;
        self.queue.push_back(Planned {
            event_type,
            created,
            effect: effect(created),
        });
    }

    fn subscription(
        &mut self,
        event_type: &'static str,
        sub: u32,
        status: &'static str,
        price: usize,
        plans: &'static Plans,
    ) {
        let price = PRICES[price];
        let tier = plans.tier_for_price(price);
        self.push(event_type, |created| Effect::Subscription {
            sub,
            created,
            status,
            price,
            tier,
        });
    }

    fn new_invoice(&mut self, sub: u32, paid: bool) -> (u32, i64) {
        self.invoices += 1;
        let invoice = self.invoices;
        let event_type = if paid {
            "invoice.paid"
        } else {
            "invoice.payment_failed"
        };
        self.push(event_type, |created| Effect::Invoice {
            invoice,
            sub,
            created,
            invoice_created: created,
            paid,
        });
        (invoice, self.clock)
    }

    fn payment_method(&mut self) {
        self.payment_methods += 1;
        let pm = self.payment_methods;
        self.push("payment_method.attached", |_| Effect::PaymentMethod { pm });
    }

    fn topup(&mut self, rng: &mut Rng) {
        self.topups += 1;
        let session = self.topups;
        let credits = PACKS[rng.below(PACKS.len())];
        self.push("checkout.session.completed", |_| Effect::Topup {
            session,
            credits,
        });
    }

    fn plan_episode(&mut self, rng: &mut Rng, plans: &'static Plans) {
        match self.stage {
            Stage::New => {
                self.push("customer.created", |_| Effect::Customer);
                self.stage = Stage::Unsubscribed;
            }
            Stage::Unsubscribed => {
                if rng.unit() < 0.25 {
                    self.topup(rng);
                    return;
                }
                self.subs += 1;
                let sub = self.subs;
                // Mostly Pro, some Pro Plus, a few Enterprise.
                let price = [0, 0, 0, 1, 1, 2, 2, 3][rng.below(8)];
                self.push("checkout.session.completed", |_| Effect::Checkout { sub });
                self.subscription("customer.subscription.created", sub, "active", price, plans);
                self.new_invoice(sub, true);
                self.payment_method();
                self.stage = Stage::Subscribed {
                    sub,
                    price,
                    past_due: false,
                    failed: None,
                };
            }
            Stage::Subscribed {
                sub,
                price,
                past_due,
                failed: Some((invoice, invoice_created)),
            } => match rng.weighted(&[60, 25, 15]) {
                // The retry succeeds (and Stripe reactivates a past-due subscription).
                0 => {
                    self.push("invoice.paid", |created| Effect::Invoice {
                        invoice,
                        sub,
                        created,
                        invoice_created,
                        paid: true,
                    });
                    if past_due {
                        self.subscription(
                            "customer.subscription.updated",
                            sub,
                            "active",
                            price,
                            plans,
                        );
                    }
                    self.stage = Stage::Subscribed {
                        sub,
                        price,
                        past_due: false,
                        failed: None,
                    };
                }
                1 if !past_due => {
                    self.subscription(
                        "customer.subscription.updated",
                        sub,
                        "past_due",
                        price,
                        plans,
                    );
                    self.stage = Stage::Subscribed {
                        sub,
                        price,
                        past_due: true,
                        failed: Some((invoice, invoice_created)),
                    };
                }
                _ => {
                    self.subscription(
                        "customer.subscription.deleted",
                        sub,
                        "canceled",
                        price,
                        plans,
                    );
                    self.stage = Stage::Unsubscribed;
                }
            },
            Stage::Subscribed {
                sub,
                price,
                past_due,
                failed: None,
            } => match rng.weighted(&[30, 12, 15, 25, 10, 5]) {
                0 => {
                    self.new_invoice(sub, true);
                }
                1 => {
                    let failed = self.new_invoice(sub, false);
                    self.stage = Stage::Subscribed {
                        sub,
                        price,
                        past_due,
                        failed: Some(failed),
                    };
                }
                2 => {
                    let other = (price + 1 + rng.below(PRICES.len() - 1)) % PRICES.len();
                    self.subscription("customer.subscription.updated", sub, "active", other, plans);
                    self.stage = Stage::Subscribed {
                        sub,
                        price: other,
                        past_due,
                        failed: None,
                    };
                }
                3 => self.topup(rng),
                4 => {
                    self.payment_method();
                }
                _ => {
                    self.subscription(
                        "customer.subscription.deleted",
                        sub,
                        "canceled",
                        price,
                        plans,
                    );
                    self.stage = Stage::Unsubscribed;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans() -> &'static Plans {
        static PLANS: std::sync::OnceLock<Plans> = std::sync::OnceLock::new();
        PLANS.get_or_init(|| {
            Plans::load(Some(
                &tollgate_test_support::workspace_root().join("config/plans.toml"),
            ))
            .expect("plans")
        })
    }

    #[test]
    fn any_order_and_duplicates_give_the_same_state() {
        let plans = plans();
        let mut script = Script::new(1_000);
        let mut rng = Rng::new(7);
        let effects: Vec<Effect> = (0..200)
            .map(|_| script.next(&mut rng, plans).effect)
            .collect();
        let mut in_order = CustomerModel::default();
        effects.iter().for_each(|e| in_order.apply(e));
        let mut shuffled = CustomerModel::default();
        let mut order: Vec<usize> = (0..effects.len()).chain(0..effects.len() / 3).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        order.iter().for_each(|i| shuffled.apply(&effects[*i]));
        assert_eq!(in_order.access(plans), shuffled.access(plans));
        assert_eq!(in_order.credits(), shuffled.credits());
        assert_eq!(in_order.subscriptions(plans), shuffled.subscriptions(plans));
        assert_eq!(in_order.invoices(), shuffled.invoices());
    }

    #[test]
    fn a_failed_payment_revokes_and_its_retry_restores() {
        let plans = plans();
        let mut model = CustomerModel::default();
        model.apply(&Effect::Checkout { sub: 1 });
        assert_eq!(model.access(plans), ("active", "free"));
        model.apply(&Effect::Subscription {
            sub: 1,
            created: 10,
            status: "active",
            price: "price_pro_monthly",
            tier: "pro",
        });
        assert_eq!(model.access(plans), ("active", "pro"));
        let failed = Effect::Invoice {
            invoice: 1,
            sub: 1,
            created: 20,
            invoice_created: 20,
            paid: false,
        };
        model.apply(&failed);
        assert_eq!(model.access(plans), ("payment_failed", "free"));
        model.apply(&Effect::Invoice {
            invoice: 1,
            sub: 1,
            created: 30,
            invoice_created: 20,
            paid: true,
        });
        model.apply(&failed);
        assert_eq!(model.access(plans), ("active", "pro"));
        model.apply(&Effect::Subscription {
            sub: 1,
            created: 40,
            status: "canceled",
            price: "price_pro_monthly",
            tier: "pro",
        });
        assert_eq!(model.access(plans), ("canceled", "free"));
    }
}
