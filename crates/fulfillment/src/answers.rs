//! What fulfillment says: one answer per intent, composed from entitlements' real
//! state; a helpful sentence (never an error) for an unknown intent or user, and a
//! fallback when a dependency is slow or down.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tollgate_plans::Plans;
use tollgate_proto::entitlements::v1 as pb;
use tollgate_proto::entitlements::v1::Reason;

use crate::dialogflow::{Answer, Turn, UserRef};
use crate::intents::{Intent, IntentNames};
use crate::upstream::{Billing, Deadline, Entitlements, UpstreamError};

/// How a turn ended, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    UnknownIntent,
    MissingUser,
    UnknownUser,
    UpstreamTimeout,
    UpstreamError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::UnknownIntent => "unknown_intent",
            Outcome::MissingUser => "missing_user",
            Outcome::UnknownUser => "unknown_user",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::UpstreamError => "upstream_error",
        }
    }
}

pub struct Responder {
    pub intents: IntentNames,
    pub plans: Plans,
    pub entitlements: Entitlements,
    pub billing: Option<Billing>,
    pub billing_page_url: Option<String>,
    pub upgrade_plan: String,
    pub per_call: std::time::Duration,
}

pub const HELP: &str = "I can tell you your subscription and payment status, what you can access, how many credits you have, how to upgrade, or how to manage your billing. What would you like to know?";
pub const SIGN_IN: &str = "I need to know who you are before I can look at your billing. Please sign in and ask me again.";

/// What a turn produced: the answer, which intent it answered and how it went.
pub struct Reply {
    pub intent: Option<Intent>,
    pub outcome: Outcome,
    pub answer: Answer,
    /// The user id once known (ids may be logged; emails never are).
    pub user_id: Option<String>,
}

struct Draft {
    outcome: Outcome,
    text: String,
    parameters: Map<String, Value>,
    link: Option<String>,
    user_id: Option<String>,
}

impl Draft {
    fn answered(text: String) -> Self {
        Self {
            outcome: Outcome::Answered,
            text,
            parameters: Map::new(),
            link: None,
            user_id: None,
        }
    }

    fn with_outcome(outcome: Outcome, text: String) -> Self {
        Self {
            outcome,
            ..Self::answered(text)
        }
    }

    fn for_user(mut self, user_id: &str) -> Self {
        if !user_id.is_empty() {
            self.parameters.insert("user_id".into(), json!(user_id));
            self.user_id = Some(user_id.to_string());
        }
        self
    }
}

impl Responder {
    pub async fn reply(&self, turn: &Turn) -> Reply {
        let intent = self.intents.resolve(turn.names.iter().map(String::as_str));
        let draft = match (intent, &turn.user) {
            (None, _) => Draft::with_outcome(Outcome::UnknownIntent, HELP.into()),
            (Some(_), None) => Draft::with_outcome(Outcome::MissingUser, SIGN_IN.into()),
            (Some(intent), Some(user)) => {
                let deadline = Deadline::start(self.per_call);
                match self.answer(intent, user, turn, deadline).await {
                    Ok(draft) => draft,
                    Err(error) => {
                        tracing::warn!(%error, intent = intent.as_str(), "upstream failed; answering the fallback");
                        let outcome = match error {
                            UpstreamError::Timeout(_) => Outcome::UpstreamTimeout,
                            UpstreamError::Failed(_) => Outcome::UpstreamError,
                        };
                        Draft::with_outcome(outcome, self.fallback())
                    }
                }
            }
        };
        let mut payload = Map::new();
        payload.insert(
            "intent".into(),
            json!(intent.map_or("unknown", Intent::as_str)),
        );
        payload.insert("outcome".into(), json!(draft.outcome.as_str()));
        if let Some(link) = &draft.link {
            payload.insert("url".into(), json!(link));
        }
        Reply {
            intent,
            outcome: draft.outcome,
            user_id: draft.user_id,
            answer: Answer {
                text: draft.text,
                parameters: draft.parameters,
                payload,
            },
        }
    }

    fn fallback(&self) -> String {
        match &self.billing_page_url {
            Some(page) => format!(
                "Sorry, I can't reach the billing system right now. Please try again in a minute, or see your billing page: {page}"
            ),
            None => {
                "Sorry, I can't reach the billing system right now. Please try again in a minute."
                    .into()
            }
        }
    }

    fn unknown_user(&self) -> Draft {
        let text = match &self.billing_page_url {
            Some(page) => format!(
                "I couldn't find a billing account for you. If you subscribed a moment ago, give it a minute; otherwise you can choose a plan here: {page}"
            ),
            None => "I couldn't find a billing account for you. If you subscribed a moment ago, give it a minute; otherwise ask me how to upgrade.".into(),
        };
        Draft::with_outcome(Outcome::UnknownUser, text)
    }

    async fn answer(
        &self,
        intent: Intent,
        user: &UserRef,
        turn: &Turn,
        deadline: Deadline,
    ) -> Result<Draft, UpstreamError> {
        let subject = user.subject();
        if intent == Intent::Features
            && let Some(feature) = turn.string_parameter("feature")
        {
            return self.can_use(&subject, &feature, deadline).await;
        }
        let state = self.entitlements.get(&subject, deadline).await?;
        if state.degraded {
            // Entitlements could not read part of its state: an answer from it could
            // say "unknown", "no features" or "0 credits" wrongly.
            return Err(UpstreamError::Failed(
                "entitlements answered degraded".into(),
            ));
        }
        match intent {
            Intent::Upgrade => return self.upgrade(&state, user, turn, deadline).await,
            // A test user (by a domain rule) has no customer yet but is known.
            _ if !state.known && !state.test_user => return Ok(self.unknown_user()),
            Intent::Status => Ok(Draft::answered(status_text(&state))),
            Intent::Features => Ok(Draft::answered(self.features_text(&state))),
            Intent::Credits => Ok(Draft::answered(credits_text(
                state.credit_balance,
                turn.count_parameter("amount"),
            ))),
            Intent::Manage => self.manage(&state, deadline).await,
        }
        .map(|draft| draft.for_user(&state.user_id))
    }

    async fn upgrade(
        &self,
        state: &pb::GetEntitlementsResponse,
        user: &UserRef,
        turn: &Turn,
        deadline: Deadline,
    ) -> Result<Draft, UpstreamError> {
        // A new user (known by id only) may check out: billing creates the customer.
        let user_id = match (state.known, user) {
            (true, _) if !state.user_id.is_empty() => state.user_id.clone(),
            (_, UserRef::UserId(id)) => id.clone(),
            // A customer without a user id of ours (created in Stripe directly).
            (true, UserRef::Email(_)) => return Ok(self.page_link("upgrade", "")),
            (false, UserRef::Email(_)) => return Ok(self.unknown_user()),
        };
        let plan_key = match turn.string_parameter("plan") {
            None => self.upgrade_plan.clone(),
            Some(asked) => match self.plan_key(&asked) {
                Some(key) => key,
                None => {
                    let names: Vec<&str> = plans_for_sale(&self.plans)
                        .iter()
                        .map(|p| p.plan.as_str())
                        .collect();
                    return Ok(Draft::answered(format!(
                        "I don't know the plan \"{asked}\". You can choose {}.",
                        join_or(&names)
                    ))
                    .for_user(&user_id));
                }
            },
        };
        // A subscriber changes plan in the Customer Portal (with proration): billing
        // sells no second subscription.
        if let Some(current) = state
            .subscription
            .as_ref()
            .filter(|s| !matches!(s.status.as_str(), "" | "canceled" | "incomplete_expired"))
        {
            return self.change_plan(&current.plan, &user_id, deadline).await;
        }
        let plan_name = self
            .plans
            .price_by_key(&plan_key)
            .map_or(plan_key.clone(), |p| p.plan.clone());
        let Some(billing) = &self.billing else {
            return Ok(self.page_link("upgrade", &user_id));
        };
        match billing.checkout(&user_id, &plan_key, deadline).await {
            Ok(url) => {
                let mut draft =
                    Draft::answered(format!("Here is your checkout link for {plan_name}: {url}"))
                        .for_user(&user_id);
                draft.parameters.insert("checkout_url".into(), json!(url));
                draft.link = Some(url);
                Ok(draft)
            }
            Err(error) => self.billing_failed(error, "upgrade", &user_id),
        }
    }

    /// A Customer Portal link for a subscriber who asked to upgrade.
    async fn change_plan(
        &self,
        plan: &str,
        user_id: &str,
        deadline: Deadline,
    ) -> Result<Draft, UpstreamError> {
        let Some(billing) = &self.billing else {
            return Ok(self.page_link("change your plan", user_id));
        };
        match billing.portal(user_id, deadline).await {
            Ok(url) => {
                let mut draft = Draft::answered(format!(
                    "You're subscribed to {plan}. You can change your plan here: {url}"
                ))
                .for_user(user_id);
                draft.parameters.insert("portal_url".into(), json!(url));
                draft.link = Some(url);
                Ok(draft)
            }
            Err(error) => self.billing_failed(error, "change your plan", user_id),
        }
    }

    async fn manage(
        &self,
        state: &pb::GetEntitlementsResponse,
        deadline: Deadline,
    ) -> Result<Draft, UpstreamError> {
        let user_id = &state.user_id;
        let Some(billing) = self.billing.as_ref().filter(|_| !user_id.is_empty()) else {
            return Ok(self.page_link("manage your billing", user_id));
        };
        match billing.portal(user_id, deadline).await {
            Ok(url) => {
                let mut draft = Draft::answered(format!(
                    "You can update your payment method, see invoices or change your plan here: {url}"
                ));
                draft.parameters.insert("portal_url".into(), json!(url));
                draft.link = Some(url);
                Ok(draft)
            }
            Err(error) => self.billing_failed(error, "manage your billing", user_id),
        }
    }

    /// Billing's API failed: the billing page still lets the user act, if configured.
    fn billing_failed(
        &self,
        error: UpstreamError,
        action: &str,
        user_id: &str,
    ) -> Result<Draft, UpstreamError> {
        match &self.billing_page_url {
            Some(_) => {
                tracing::warn!(%error, "billing API failed; answering with the billing page");
                let mut draft = self.page_link(action, user_id);
                draft.outcome = match error {
                    UpstreamError::Timeout(_) => Outcome::UpstreamTimeout,
                    UpstreamError::Failed(_) => Outcome::UpstreamError,
                };
                Ok(draft)
            }
            None => Err(error),
        }
    }

    fn page_link(&self, action: &str, user_id: &str) -> Draft {
        match &self.billing_page_url {
            Some(page) => {
                let mut draft =
                    Draft::answered(format!("You can {action} on your billing page: {page}"))
                        .for_user(user_id);
                draft.link = Some(page.clone());
                draft
            }
            None => Draft::with_outcome(Outcome::UpstreamError, self.fallback()).for_user(user_id),
        }
    }

    /// A plan the user named: a key (`pro_monthly`) or its name ("Pro monthly").
    fn plan_key(&self, asked: &str) -> Option<String> {
        let wanted = asked.trim().to_lowercase().replace([' ', '-'], "_");
        self.plans
            .prices_for_sale()
            .find(|p| {
                p.key.as_deref() == Some(wanted.as_str())
                    || p.plan.to_lowercase().replace([' ', '-'], "_") == wanted
            })
            .and_then(|p| p.key.clone())
    }

    fn describe(&self, feature: &str) -> String {
        self.plans
            .feature(feature)
            .map_or_else(|| feature.to_string(), |f| f.description.clone())
    }

    /// A feature the user named: its key, or its description.
    fn feature_key(&self, asked: &str) -> String {
        let wanted = asked.trim().to_lowercase();
        self.plans
            .features()
            .find(|(key, f)| key.to_lowercase() == wanted || f.description.to_lowercase() == wanted)
            .map_or(wanted.clone(), |(key, _)| key.to_string())
    }

    fn features_text(&self, state: &pb::GetEntitlementsResponse) -> String {
        let mut features = state.features.clone();
        features.sort();
        let described: Vec<String> = features.iter().map(|f| self.describe(f)).collect();
        let tier = tier_name(state);
        if described.is_empty() {
            return format!("On {tier} you have no features right now.");
        }
        let refs: Vec<&str> = described.iter().map(String::as_str).collect();
        format!("With {tier} you can: {}.", join_and(&refs))
    }

    async fn can_use(
        &self,
        subject: &str,
        asked: &str,
        deadline: Deadline,
    ) -> Result<Draft, UpstreamError> {
        let feature = self.feature_key(asked);
        let check = self.entitlements.check(subject, &feature, deadline).await?;
        let what = self.describe(&feature);
        let tier = self
            .plans
            .tier(&check.tier)
            .map_or(check.tier.clone(), |t| t.name.clone());
        let reason = Reason::try_from(check.reason).unwrap_or(Reason::Unspecified);
        if reason == Reason::UnknownSubject {
            return Ok(self.unknown_user());
        }
        let text = match (check.allowed, reason) {
            (true, _) => format!("Yes: \"{what}\" is included in your {tier} plan."),
            (false, Reason::NotInTier) => {
                format!("No: \"{what}\" isn't included in {tier}. Ask me how to upgrade to get it.")
            }
            (false, Reason::NotSubscribed | Reason::Cancelled) => {
                format!("No: \"{what}\" needs an active subscription. Ask me how to upgrade.")
            }
            (false, Reason::PaymentFailed | Reason::PastDue | Reason::Unpaid) => format!(
                "Not right now: \"{what}\" is paused because of a payment problem. Ask me to manage your billing to fix it."
            ),
            (false, Reason::QuotaExhausted) => {
                format!("You've used up your quota for \"{what}\" for now.")
            }
            (false, Reason::UnknownFeature) => {
                format!("I don't know a feature called \"{asked}\".")
            }
            (false, _) => format!("No: \"{what}\" isn't available to you right now."),
        };
        Ok(Draft::answered(text))
    }
}

/// The plans a checkout sells, cheapest tier first (by tier rank, then key).
pub fn plans_for_sale(plans: &Plans) -> Vec<&tollgate_plans::Price> {
    let mut prices: Vec<_> = plans.prices_for_sale().collect();
    prices.sort_by_key(|p| {
        (
            plans.tier(&p.tier).map_or(u32::MAX, |t| t.rank),
            p.key.clone(),
        )
    });
    prices
}

fn tier_name(state: &pb::GetEntitlementsResponse) -> &str {
    if state.tier_name.is_empty() {
        &state.tier
    } else {
        &state.tier_name
    }
}

fn date(timestamp: &prost_types::Timestamp) -> String {
    DateTime::<Utc>::from_timestamp(timestamp.seconds, 0)
        .map_or_else(String::new, |d| d.format("%B %-d, %Y").to_string())
}

fn status_phrase(status: &str) -> String {
    match status {
        "active" => "active".into(),
        "trialing" => "in its trial period".into(),
        "past_due" => "past due".into(),
        "unpaid" => "unpaid".into(),
        "canceled" => "canceled".into(),
        "payment_failed" => "on hold because the latest payment failed".into(),
        "disputed" => "on hold because a payment is disputed".into(),
        other => other.replace('_', " "),
    }
}

fn interval(interval: &str) -> String {
    match interval {
        "day" => "daily".into(),
        "week" => "weekly".into(),
        "month" => "monthly".into(),
        "year" => "yearly".into(),
        other => format!("every {other}"),
    }
}

pub fn status_text(state: &pb::GetEntitlementsResponse) -> String {
    let tier = tier_name(state);
    let Some(sub) = &state.subscription else {
        if state.test_user {
            return format!(
                "You don't have a subscription; you have test access to the {tier} plan."
            );
        }
        return format!(
            "You don't have a subscription, so you're on the {tier} plan. Ask me how to upgrade if you'd like more."
        );
    };
    let plan = if sub.plan.is_empty() {
        tier.to_string()
    } else {
        sub.plan.clone()
    };
    let mut text = format!("You're on {plan}");
    if !sub.billing_interval.is_empty() {
        text.push_str(&format!(", billed {}", interval(&sub.billing_interval)));
    }
    text.push_str(&format!(
        ". Your subscription is {}.",
        status_phrase(&state.status)
    ));
    match (sub.payment_status.as_str(), &sub.last_payment_date) {
        ("paid", Some(paid)) => text.push_str(&format!(
            " Your last payment went through on {}.",
            date(paid)
        )),
        ("paid", None) => text.push_str(" Your latest invoice is paid."),
        ("failed", _) => text.push_str(
            " Your latest payment failed: ask me to manage your billing to update your card.",
        ),
        ("open", _) => text.push_str(" Your latest invoice is still open."),
        _ => {}
    }
    match (
        &sub.next_billing_date,
        sub.cancel_at_period_end,
        &sub.current_period_end,
    ) {
        (Some(next), _, _) => text.push_str(&format!(" Next billing date: {}.", date(next))),
        (None, true, Some(end)) => text.push_str(&format!(" It ends on {}.", date(end))),
        _ => {}
    }
    text
}

pub fn credits_text(balance: i64, wanted: Option<u64>) -> String {
    let unit = if balance == 1 { "credit" } else { "credits" };
    let mut text = format!("You have {} {unit}.", thousands(balance));
    if let Some(wanted) = wanted {
        let wanted = i64::try_from(wanted).unwrap_or(i64::MAX);
        if balance >= wanted {
            text.push_str(&format!(" That's enough for {}.", thousands(wanted)));
        } else {
            text.push_str(&format!(
                " That's not enough for {}: you need {} more.",
                thousands(wanted),
                thousands(wanted - balance)
            ));
        }
    }
    text
}

/// 1250 → "1,250".
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn join_with(items: &[&str], last: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

fn join_and(items: &[&str]) -> String {
    join_with(items, "and")
}

fn join_or(items: &[&str]) -> String {
    join_with(items, "or")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_lists_read_naturally() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1250), "1,250");
        assert_eq!(thousands(-1_000_000), "-1,000,000");
        assert_eq!(join_and(&["a"]), "a");
        assert_eq!(join_and(&["a", "b", "c"]), "a, b and c");
        assert_eq!(credits_text(1, None), "You have 1 credit.");
        assert_eq!(
            credits_text(250, Some(500)),
            "You have 250 credits. That's not enough for 500: you need 250 more."
        );
    }
}
