//! The plans file (`config/plans.toml`, path overridable with `TOLLGATE_PLANS`):
//! which Stripe prices grant which tier, and what each tier may use. Rules are
//! configuration, not code; billing maps prices to tiers with it, entitlements
//! maps tiers to features, quotas and outage policy.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

pub const DEFAULT_PATH: &str = "config/plans.toml";

/// What a check on a feature answers when its backing store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WhenUnavailable {
    /// Allow (answered with degraded = true): for features whose misuse costs little.
    Open,
    /// Deny (answered with degraded = true): the safe default.
    #[default]
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub when_unavailable: WhenUnavailable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub daily: Option<u64>,
    pub monthly: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Shown to people ("Pro Plus").
    pub name: String,
    /// Higher ranks are better: an upgrade moves to a higher rank.
    pub rank: u32,
    /// Tiers whose features (and quotas, unless overridden) this one has too.
    #[serde(default)]
    pub includes: Vec<String>,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub quotas: BTreeMap<String, Quota>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Stripe price id (`price_...`).
    pub id: String,
    pub tier: String,
    /// Plan name shown to people ("Pro monthly").
    pub plan: String,
    /// What a checkout asks for (`pro_monthly`): only prices with a key are sold through
    /// Tollgate's checkout; the others still map to their tier (older or hand-made prices).
    #[serde(default)]
    pub key: Option<String>,
}

/// A credit pack as the plans file writes it (`[[credit_packs]]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditPackEntry {
    credits: u64,
    #[serde(default)]
    price: Option<String>,
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    currency: Option<String>,
}

/// A credit pack sold through a payment-mode checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditPack {
    /// Credits bought; also what a checkout asks for (`500`).
    pub credits: u64,
    pub price: PackPrice,
}

/// How a credit pack is priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackPrice {
    /// A Stripe price id (`price = "price_..."`).
    Stripe(String),
    /// `amount` in minor units (500 is 5.00) of `currency` (ISO 4217, lower case), sent
    /// to Stripe as inline `price_data`.
    Amount { amount: u64, currency: String },
}

/// Access rules that are not about tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Revoke access while a payment of the customer is disputed (chargeback).
    #[serde(default)]
    pub revoke_on_dispute: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlansFile {
    default_tier: String,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    features: BTreeMap<String, Feature>,
    tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    prices: Vec<Price>,
    #[serde(default)]
    credit_packs: Vec<CreditPackEntry>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlansError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("plans file is not valid: {0}")]
    Syntax(String),
    #[error("default_tier `{0}` is not a tier")]
    UnknownDefaultTier(String),
    #[error("tier `{tier}` includes unknown tier `{included}`")]
    UnknownInclude { tier: String, included: String },
    #[error("tier `{0}` includes itself (directly or through others)")]
    IncludeCycle(String),
    #[error("tier `{tier}` lists undeclared feature `{feature}` (declare it under [features])")]
    UnknownFeature { tier: String, feature: String },
    #[error("price `{price}` maps to unknown tier `{tier}`")]
    UnknownPriceTier { price: String, tier: String },
    #[error("price `{0}` is listed twice")]
    DuplicatePrice(String),
    #[error("price key `{0}` is used twice or is not lower-case letters, digits and underscores")]
    BadPriceKey(String),
    #[error("credit pack of {credits}: {reason}")]
    BadCreditPack { credits: u64, reason: &'static str },
}

/// A validated plans file, with each tier's inherited features resolved.
#[derive(Debug, Clone)]
pub struct Plans {
    default_tier: String,
    policy: Policy,
    features: BTreeMap<String, Feature>,
    tiers: BTreeMap<String, Tier>,
    resolved: BTreeMap<String, ResolvedTier>,
    prices: BTreeMap<String, Price>,
    /// Price key → price id.
    keys: BTreeMap<String, String>,
    credit_packs: Vec<CreditPack>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTier {
    pub features: BTreeSet<String>,
    pub quotas: BTreeMap<String, Quota>,
}

impl Plans {
    /// Reads `TOLLGATE_PLANS` or `config/plans.toml`.
    pub fn load(path: Option<&Path>) -> Result<Self, PlansError> {
        let path = path.unwrap_or(Path::new(DEFAULT_PATH));
        let text = std::fs::read_to_string(path).map_err(|e| PlansError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, PlansError> {
        let file: PlansFile =
            toml::from_str(text).map_err(|e| PlansError::Syntax(e.to_string()))?;
        if !file.tiers.contains_key(&file.default_tier) {
            return Err(PlansError::UnknownDefaultTier(file.default_tier));
        }
        for (name, tier) in &file.tiers {
            if let Some(included) = tier.includes.iter().find(|i| !file.tiers.contains_key(*i)) {
                return Err(PlansError::UnknownInclude {
                    tier: name.clone(),
                    included: included.clone(),
                });
            }
            if let Some(feature) = tier
                .features
                .iter()
                .find(|f| !file.features.contains_key(*f))
            {
                return Err(PlansError::UnknownFeature {
                    tier: name.clone(),
                    feature: feature.clone(),
                });
            }
        }
        let mut resolved = BTreeMap::new();
        for name in file.tiers.keys() {
            resolve(name, &file.tiers, &mut resolved, &mut Vec::new())?;
        }
        let mut prices = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for price in file.prices {
            if let Some(key) = &price.key {
                let slug = !key.is_empty()
                    && key.len() <= 64
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !slug || keys.insert(key.clone(), price.id.clone()).is_some() {
                    return Err(PlansError::BadPriceKey(key.clone()));
                }
            }
            if !file.tiers.contains_key(&price.tier) {
                return Err(PlansError::UnknownPriceTier {
                    price: price.id,
                    tier: price.tier,
                });
            }
            if prices.contains_key(&price.id) {
                return Err(PlansError::DuplicatePrice(price.id));
            }
            prices.insert(price.id.clone(), price);
        }
        let mut credit_packs: Vec<CreditPack> = Vec::new();
        for entry in file.credit_packs {
            let bad = |reason| PlansError::BadCreditPack {
                credits: entry.credits,
                reason,
            };
            if entry.credits == 0 {
                return Err(bad("credits must be at least 1"));
            }
            if credit_packs.iter().any(|p| p.credits == entry.credits) {
                return Err(bad("listed twice"));
            }
            let price = match (entry.price, entry.amount, entry.currency) {
                (Some(price), None, None) if !price.is_empty() => PackPrice::Stripe(price),
                (None, Some(amount), Some(currency)) => {
                    if amount == 0 {
                        return Err(bad("amount must be at least 1 (minor units)"));
                    }
                    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
                        return Err(bad("currency must be three lower-case letters (usd)"));
                    }
                    PackPrice::Amount { amount, currency }
                }
                _ => return Err(bad("needs either `price`, or `amount` and `currency`")),
            };
            credit_packs.push(CreditPack {
                credits: entry.credits,
                price,
            });
        }
        credit_packs.sort_by_key(|p| p.credits);
        Ok(Self {
            default_tier: file.default_tier,
            policy: file.policy,
            features: file.features,
            tiers: file.tiers,
            resolved,
            prices,
            keys,
            credit_packs,
        })
    }

    /// The price a checkout for plan `key` (`pro_monthly`) sells.
    pub fn price_by_key(&self, key: &str) -> Option<&Price> {
        self.keys.get(key).and_then(|id| self.prices.get(id))
    }

    /// Every price a checkout can sell (those with a key), by key.
    pub fn prices_for_sale(&self) -> impl Iterator<Item = &Price> {
        self.keys.values().filter_map(|id| self.prices.get(id))
    }

    /// The credit pack of `credits` credits.
    pub fn credit_pack(&self, credits: u64) -> Option<&CreditPack> {
        self.credit_packs.iter().find(|p| p.credits == credits)
    }

    /// Every credit pack, smallest first.
    pub fn credit_packs(&self) -> &[CreditPack] {
        &self.credit_packs
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The tier of users without a paying subscription.
    pub fn default_tier(&self) -> &str {
        &self.default_tier
    }

    /// The price's entry, if this plans file knows it.
    pub fn price(&self, stripe_price_id: &str) -> Option<&Price> {
        self.prices.get(stripe_price_id)
    }

    /// Tier granted by a Stripe price; unknown prices grant the default tier.
    pub fn tier_for_price(&self, stripe_price_id: &str) -> &str {
        self.price(stripe_price_id)
            .map_or(self.default_tier.as_str(), |p| p.tier.as_str())
    }

    /// The tier with the highest rank (what a test user gets unless told otherwise).
    pub fn top_tier(&self) -> &str {
        self.tiers
            .iter()
            .max_by_key(|(_, tier)| tier.rank)
            .map_or(self.default_tier.as_str(), |(name, _)| name.as_str())
    }

    /// Every feature the plans file declares.
    pub fn features(&self) -> impl Iterator<Item = (&str, &Feature)> {
        self.features
            .iter()
            .map(|(name, feature)| (name.as_str(), feature))
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// The tier's own and inherited features and quotas.
    pub fn resolved(&self, tier: &str) -> Option<&ResolvedTier> {
        self.resolved.get(tier)
    }

    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.features.get(name)
    }

    pub fn tier_has_feature(&self, tier: &str, feature: &str) -> bool {
        self.resolved(tier)
            .is_some_and(|r| r.features.contains(feature))
    }
}

fn resolve(
    name: &str,
    tiers: &BTreeMap<String, Tier>,
    done: &mut BTreeMap<String, ResolvedTier>,
    visiting: &mut Vec<String>,
) -> Result<ResolvedTier, PlansError> {
    if let Some(resolved) = done.get(name) {
        return Ok(resolved.clone());
    }
    if visiting.iter().any(|v| v == name) {
        return Err(PlansError::IncludeCycle(name.to_string()));
    }
    visiting.push(name.to_string());
    let tier = &tiers[name];
    let mut resolved = ResolvedTier {
        features: BTreeSet::new(),
        quotas: BTreeMap::new(),
    };
    for included in &tier.includes {
        let inherited = resolve(included, tiers, done, visiting)?;
        resolved.features.extend(inherited.features);
        resolved.quotas.extend(inherited.quotas);
    }
    resolved.features.extend(tier.features.iter().cloned());
    // A tier's own quota replaces an inherited one for the same feature.
    resolved.quotas.extend(tier.quotas.clone());
    visiting.pop();
    done.insert(name.to_string(), resolved.clone());
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(file: &str) -> Plans {
        let path = Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../../config")
        .join(file);
        Plans::load(Some(&path)).unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    #[test]
    fn the_free_pro_plus_enterprise_scheme() {
        let plans = shipped("plans.toml");
        assert_eq!(plans.default_tier(), "free");
        assert_eq!(plans.top_tier(), "enterprise");
        assert!(!plans.policy().revoke_on_dispute);
        assert_eq!(plans.tier_for_price("price_pro_monthly"), "pro");
        assert_eq!(plans.tier_for_price("price_unknown"), "free");
        assert!(
            plans.tier_has_feature("enterprise", "docs.read"),
            "inherited through pro_plus and pro"
        );
        assert!(plans.tier_has_feature("pro_plus", "api.priority"));
        assert!(!plans.tier_has_feature("pro", "api.priority"));
        assert!(!plans.tier_has_feature("free", "scripts.download"));
        let ranks: Vec<u32> = ["free", "pro", "pro_plus", "enterprise"]
            .iter()
            .map(|t| plans.tier(t).unwrap().rank)
            .collect();
        assert!(ranks.windows(2).all(|w| w[0] < w[1]), "{ranks:?}");
        assert_eq!(
            plans
                .price_by_key("pro_plus_monthly")
                .map(|p| p.id.as_str()),
            Some("price_pro_plus_monthly")
        );
        assert_eq!(
            plans.price_by_key("price_pro_monthly"),
            None,
            "keys, not ids"
        );
        assert_eq!(plans.prices_for_sale().count(), 4);
        let packs: Vec<u64> = plans.credit_packs().iter().map(|p| p.credits).collect();
        assert_eq!(packs, [500, 1000, 5000, 10000]);
        assert_eq!(
            plans.credit_pack(1000).map(|p| &p.price),
            Some(&PackPrice::Amount {
                amount: 900,
                currency: "usd".into()
            })
        );
        assert!(plans.credit_pack(750).is_none());
        let free_calls = plans.resolved("free").unwrap().quotas["api.calls"];
        let pro_calls = plans.resolved("pro").unwrap().quotas["api.calls"];
        assert!(
            pro_calls.daily > free_calls.daily,
            "pro overrides the inherited quota"
        );
    }

    #[test]
    fn the_visitor_subscriber_paid_scheme() {
        let plans = shipped("plans.visitor-subscriber-paid.toml");
        assert_eq!(plans.default_tier(), "visitor");
        assert_eq!(plans.top_tier(), "paid");
        assert!(plans.policy().revoke_on_dispute);
        assert!(plans.tier_has_feature("visitor", "content.public"));
        assert!(plans.tier_has_feature("subscriber", "docs.read"));
        assert!(plans.tier_has_feature("subscriber", "scripts.download"));
        assert!(!plans.tier_has_feature("subscriber", "slack.community"));
        assert!(plans.tier_has_feature("paid", "slack.community"));
        assert!(plans.tier_has_feature("paid", "content.public"));
    }

    #[test]
    fn mistakes_are_named() {
        let base = r#"
            default_tier = "free"
            [features]
            "a" = {}
            [tiers.free]
            name = "Free"
            rank = 0
            features = ["a"]
        "#;
        assert!(Plans::parse(base).is_ok());
        let cases = [
            (
                base.replace(r#"default_tier = "free""#, r#"default_tier = "gold""#),
                PlansError::UnknownDefaultTier("gold".into()),
            ),
            (
                base.replace(r#"features = ["a"]"#, r#"features = ["b"]"#),
                PlansError::UnknownFeature {
                    tier: "free".into(),
                    feature: "b".into(),
                },
            ),
            (
                base.replace(r#"features = ["a"]"#, r#"includes = ["free"]"#),
                PlansError::IncludeCycle("free".into()),
            ),
            (
                base.replace(r#"features = ["a"]"#, r#"includes = ["pro"]"#),
                PlansError::UnknownInclude {
                    tier: "free".into(),
                    included: "pro".into(),
                },
            ),
            (
                format!("{base}\n[[prices]]\nid = \"p\"\ntier = \"gold\"\nplan = \"Gold\""),
                PlansError::UnknownPriceTier {
                    price: "p".into(),
                    tier: "gold".into(),
                },
            ),
            (
                format!(
                    "{base}\n[[prices]]\nid = \"p\"\ntier = \"free\"\nplan = \"A\"\n[[prices]]\nid = \"p\"\ntier = \"free\"\nplan = \"B\""
                ),
                PlansError::DuplicatePrice("p".into()),
            ),
            (
                format!(
                    "{base}\n[[prices]]\nid = \"p\"\ntier = \"free\"\nplan = \"A\"\nkey = \"k\"\n[[prices]]\nid = \"q\"\ntier = \"free\"\nplan = \"B\"\nkey = \"k\""
                ),
                PlansError::BadPriceKey("k".into()),
            ),
            (
                format!(
                    "{base}\n[[prices]]\nid = \"p\"\ntier = \"free\"\nplan = \"A\"\nkey = \"Pro Monthly\""
                ),
                PlansError::BadPriceKey("Pro Monthly".into()),
            ),
            (
                format!("{base}\n[[credit_packs]]\ncredits = 5\namount = 100"),
                PlansError::BadCreditPack {
                    credits: 5,
                    reason: "needs either `price`, or `amount` and `currency`",
                },
            ),
            (
                format!("{base}\n[[credit_packs]]\ncredits = 5\nprice = \"price_5\"\namount = 100"),
                PlansError::BadCreditPack {
                    credits: 5,
                    reason: "needs either `price`, or `amount` and `currency`",
                },
            ),
            (
                format!("{base}\n[[credit_packs]]\ncredits = 5\namount = 100\ncurrency = \"USD\""),
                PlansError::BadCreditPack {
                    credits: 5,
                    reason: "currency must be three lower-case letters (usd)",
                },
            ),
            (
                format!(
                    "{base}\n[[credit_packs]]\ncredits = 5\nprice = \"a\"\n[[credit_packs]]\ncredits = 5\nprice = \"b\""
                ),
                PlansError::BadCreditPack {
                    credits: 5,
                    reason: "listed twice",
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Plans::parse(&text).unwrap_err(), expected);
        }
        assert!(matches!(
            Plans::parse("default_tier = 3"),
            Err(PlansError::Syntax(_))
        ));
        assert!(matches!(
            Plans::parse(&base.replace("rank = 0", "rank = 0\ncolour = \"red\"")),
            Err(PlansError::Syntax(_))
        ));
    }
}
