//! The access rules, as pure functions of the state and the plans file (no I/O):
//! who has which tier, and what a check on one feature answers.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use tollgate_plans::{Plans, Quota, WhenUnavailable};
use tollgate_proto::entitlements::v1::Reason;

use crate::model::CustomerState;
use crate::test_users::TestUserRule;

/// Statuses that revoke access at once, Stripe features included.
const REVOKING: &[&str] = &[
    "payment_failed",
    "past_due",
    "unpaid",
    "canceled",
    "disputed",
];

/// A subject's access, decided once per call and shared by every feature asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub enforcement: bool,
    /// A customer row exists.
    pub known: bool,
    pub status: String,
    pub tier: String,
    pub test_user: bool,
    /// Stripe entitlement features that grant now (none while access is revoked).
    pub stripe_features: Vec<String>,
}

impl Access {
    pub fn new(
        plans: &Plans,
        enforcement: bool,
        state: Option<&CustomerState>,
        test_rule: Option<&TestUserRule>,
        now: DateTime<Utc>,
    ) -> Self {
        let known = state.is_some_and(|s| !s.deleted);
        let status = match state {
            Some(s) if s.deleted => "deleted".to_string(),
            Some(s) => s.access_status.clone(),
            None => "unknown".to_string(),
        };
        let flagged = state.is_some_and(|s| s.flagged_test_user(now));
        let test_user = test_rule.is_some() || flagged;
        let tier = if test_user {
            test_rule
                .and_then(|r| r.tier.clone())
                .filter(|t| plans.tier(t).is_some())
                .unwrap_or_else(|| plans.top_tier().to_string())
        } else {
            state
                .filter(|s| !s.deleted)
                .and_then(|s| s.tier.clone())
                .filter(|t| plans.tier(t).is_some())
                .unwrap_or_else(|| plans.default_tier().to_string())
        };
        let stripe_features = match state {
            Some(state) if !state.deleted && !REVOKING.contains(&state.access_status.as_str()) => {
                state.stripe_features.clone()
            }
            _ => Vec::new(),
        };
        Self {
            enforcement,
            known,
            status,
            tier,
            test_user,
            stripe_features,
        }
    }

    /// Whether the tier (with what it includes) or a Stripe feature grants `feature`.
    pub fn grants(&self, plans: &Plans, feature: &str) -> bool {
        plans.tier_has_feature(&self.tier, feature)
            || self.stripe_features.iter().any(|f| f == feature)
    }

    /// Every feature granted now: the tier's (with inherited ones) and Stripe's.
    pub fn features(&self, plans: &Plans) -> BTreeSet<String> {
        let mut features = plans
            .resolved(&self.tier)
            .map(|r| r.features.clone())
            .unwrap_or_default();
        features.extend(self.stripe_features.iter().cloned());
        features
    }

    /// The answer for one feature before quotas: (allowed, reason).
    pub fn decide(&self, plans: &Plans, feature: &str) -> (bool, Reason) {
        if !self.enforcement {
            return (true, Reason::EnforcementDisabled);
        }
        if !self.known && !self.test_user {
            return (false, Reason::UnknownSubject);
        }
        if self.grants(plans, feature) {
            return (true, Reason::Ok);
        }
        if plans.feature(feature).is_none() {
            return (false, Reason::UnknownFeature);
        }
        let reason = match self.status.as_str() {
            "payment_failed" => Reason::PaymentFailed,
            "past_due" => Reason::PastDue,
            "unpaid" => Reason::Unpaid,
            "canceled" => Reason::Cancelled,
            "disputed" => Reason::Disputed,
            "active" | "trialing" => Reason::NotInTier,
            _ if self.test_user => Reason::NotInTier,
            _ => Reason::NotSubscribed,
        };
        (false, reason)
    }

    /// The tier's quota on the feature, if it has one with a limit.
    pub fn quota<'p>(&self, plans: &'p Plans, feature: &str) -> Option<&'p Quota> {
        plans
            .resolved(&self.tier)
            .and_then(|r| r.quotas.get(feature))
            .filter(|q| q.daily.is_some() || q.monthly.is_some())
    }
}

/// The answer when the store a decision needs is unavailable: the feature's
/// `when_unavailable` (undeclared features fail closed).
pub fn degraded(plans: &Plans, enforcement: bool, feature: &str) -> (bool, Reason) {
    if !enforcement {
        return (true, Reason::EnforcementDisabled);
    }
    let open = plans
        .feature(feature)
        .is_some_and(|f| f.when_unavailable == WhenUnavailable::Open);
    (open, Reason::StoreUnavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans(file: &str) -> Plans {
        let path = std::path::Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../../config")
        .join(file);
        Plans::load(Some(&path)).unwrap()
    }

    fn customer(status: &str, tier: &str) -> CustomerState {
        CustomerState {
            customer_id: uuid::Uuid::nil(),
            customer_version: 1,
            user_id: Some("u".into()),
            email: None,
            access_status: status.into(),
            tier: Some(tier.into()),
            stripe_features: vec![],
            test_user: false,
            test_user_until: None,
            deleted: false,
        }
    }

    fn decide(plans: &Plans, state: Option<&CustomerState>, feature: &str) -> (bool, Reason) {
        Access::new(plans, true, state, None, Utc::now()).decide(plans, feature)
    }

    #[test]
    fn every_reason_from_the_free_pro_scheme() {
        let p = plans("plans.toml");
        let ok = (true, Reason::Ok);
        assert_eq!(
            decide(&p, Some(&customer("active", "pro")), "scripts.download"),
            ok
        );
        assert_eq!(
            decide(&p, Some(&customer("trialing", "pro")), "scripts.download"),
            ok
        );
        assert_eq!(
            decide(&p, Some(&customer("active", "pro")), "sso"),
            (false, Reason::NotInTier)
        );
        for (status, reason) in [
            ("payment_failed", Reason::PaymentFailed),
            ("past_due", Reason::PastDue),
            ("unpaid", Reason::Unpaid),
            ("canceled", Reason::Cancelled),
            ("disputed", Reason::Disputed),
            ("none", Reason::NotSubscribed),
            ("incomplete", Reason::NotSubscribed),
        ] {
            // Billing drops a revoked customer to the default tier.
            let state = customer(status, "free");
            assert_eq!(
                decide(&p, Some(&state), "scripts.download"),
                (false, reason),
                "{status}"
            );
            assert_eq!(
                decide(&p, Some(&state), "docs.read"),
                ok,
                "free features stay"
            );
        }
        assert_eq!(
            decide(&p, None, "docs.read"),
            (false, Reason::UnknownSubject)
        );
        assert_eq!(
            decide(&p, Some(&customer("active", "pro")), "no.such.feature"),
            (false, Reason::UnknownFeature)
        );
        let off = Access::new(&p, false, None, None, Utc::now());
        assert_eq!(off.decide(&p, "sso"), (true, Reason::EnforcementDisabled));
    }

    #[test]
    fn the_visitor_subscriber_paid_scheme() {
        let p = plans("plans.visitor-subscriber-paid.toml");
        let sub = customer("active", "subscriber");
        assert_eq!(decide(&p, Some(&sub), "docs.read"), (true, Reason::Ok));
        assert_eq!(decide(&p, Some(&sub), "content.public"), (true, Reason::Ok));
        assert_eq!(
            decide(&p, Some(&sub), "slack.community"),
            (false, Reason::NotInTier)
        );
        assert_eq!(
            decide(&p, Some(&customer("active", "paid")), "slack.community"),
            (true, Reason::Ok)
        );
        assert_eq!(
            decide(&p, Some(&customer("none", "visitor")), "docs.read"),
            (false, Reason::NotSubscribed)
        );
    }

    #[test]
    fn stripe_features_grant_until_access_is_revoked() {
        let p = plans("plans.toml");
        let mut state = customer("active", "free");
        state.stripe_features = vec!["sso".into(), "beta.widgets".into()];
        assert_eq!(decide(&p, Some(&state), "sso"), (true, Reason::Ok));
        assert_eq!(decide(&p, Some(&state), "beta.widgets"), (true, Reason::Ok));
        state.access_status = "payment_failed".into();
        assert_eq!(
            decide(&p, Some(&state), "sso"),
            (false, Reason::PaymentFailed)
        );
        assert_eq!(
            decide(&p, Some(&state), "beta.widgets"),
            (false, Reason::UnknownFeature)
        );
    }

    #[test]
    fn test_users_get_the_top_tier_or_their_rule_s_until_expiry() {
        let p = plans("plans.toml");
        let rule = TestUserRule {
            id: 1,
            kind: "email".into(),
            value: "qa@example.com".into(),
            tier: None,
            expires_at: Utc::now() + chrono::Duration::hours(1),
        };
        let access = Access::new(&p, true, None, Some(&rule), Utc::now());
        assert!(access.test_user);
        assert_eq!(access.tier, "enterprise");
        assert_eq!(access.decide(&p, "sso"), (true, Reason::Ok));
        let pro_rule = TestUserRule {
            tier: Some("pro".into()),
            ..rule
        };
        let access = Access::new(&p, true, None, Some(&pro_rule), Utc::now());
        assert_eq!(access.decide(&p, "sso"), (false, Reason::NotInTier));
        // The customer row's own flag, with its expiry.
        let mut flagged = customer("none", "free");
        flagged.test_user = true;
        flagged.test_user_until = Some(Utc::now() + chrono::Duration::minutes(5));
        assert_eq!(decide(&p, Some(&flagged), "sso"), (true, Reason::Ok));
        flagged.test_user_until = Some(Utc::now() - chrono::Duration::minutes(5));
        assert_eq!(
            decide(&p, Some(&flagged), "sso"),
            (false, Reason::NotSubscribed)
        );
    }

    #[test]
    fn unavailable_stores_answer_by_the_feature_s_policy() {
        let p = plans("plans.toml");
        assert_eq!(
            degraded(&p, true, "docs.read"),
            (true, Reason::StoreUnavailable)
        );
        assert_eq!(degraded(&p, true, "sso"), (false, Reason::StoreUnavailable));
        assert_eq!(
            degraded(&p, true, "undeclared"),
            (false, Reason::StoreUnavailable)
        );
        assert_eq!(
            degraded(&p, false, "sso"),
            (true, Reason::EnforcementDisabled)
        );
    }
}
