//! Which answer a Dialogflow turn asks for: ES actions, ES intent display names and
//! CX fulfillment tags all map to the same five answers.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Subscription and payment status.
    Status,
    /// What the user may access.
    Features,
    /// Credit balance.
    Credits,
    /// A checkout link.
    Upgrade,
    /// A Customer Portal link.
    Manage,
}

impl Intent {
    pub const ALL: [Intent; 5] = [
        Intent::Status,
        Intent::Features,
        Intent::Credits,
        Intent::Upgrade,
        Intent::Manage,
    ];

    /// The default name, and the label in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Status => "billing.status",
            Intent::Features => "billing.features",
            Intent::Credits => "billing.credits",
            Intent::Upgrade => "billing.upgrade",
            Intent::Manage => "billing.manage",
        }
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The configured names of each answer, compared case-insensitively.
#[derive(Debug, Clone)]
pub struct IntentNames {
    names: Vec<(Intent, Vec<String>)>,
}

impl Default for IntentNames {
    fn default() -> Self {
        Self {
            names: Intent::ALL
                .iter()
                .map(|intent| (*intent, vec![intent.as_str().to_string()]))
                .collect(),
        }
    }
}

impl IntentNames {
    pub fn set(&mut self, intent: Intent, names: Vec<String>) {
        let lowered = names.into_iter().map(|n| n.to_lowercase()).collect();
        for (i, list) in &mut self.names {
            if *i == intent {
                *list = lowered;
                return;
            }
        }
    }

    /// A name configured for two answers, if any.
    pub fn clash(&self) -> Option<String> {
        let mut seen = std::collections::HashMap::new();
        for (intent, names) in &self.names {
            for name in names {
                if let Some(other) = seen.insert(name.clone(), *intent)
                    && other != *intent
                {
                    return Some(name.clone());
                }
            }
        }
        None
    }

    /// The first candidate (ES action, then display name; or the CX tag) that names
    /// an answer.
    pub fn resolve<'a>(&self, candidates: impl IntoIterator<Item = &'a str>) -> Option<Intent> {
        candidates.into_iter().find_map(|candidate| {
            let candidate = candidate.trim().to_lowercase();
            self.names
                .iter()
                .find(|(_, names)| names.contains(&candidate))
                .map(|(intent, _)| *intent)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_case_insensitively_in_candidate_order() {
        let mut names = IntentNames::default();
        names.set(Intent::Status, vec!["Billing Status".into()]);
        assert_eq!(names.resolve(["BILLING.CREDITS"]), Some(Intent::Credits));
        assert_eq!(
            names.resolve(["input.unknown", "billing status"]),
            Some(Intent::Status)
        );
        assert_eq!(names.resolve(["billing.status"]), None);
        assert_eq!(names.resolve(["", "smalltalk.greetings"]), None);
        assert_eq!(names.clash(), None);
    }
}
