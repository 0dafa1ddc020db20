//! The plain-text emails: subject and body from a row's kind and data.
//!
//! Rendered when the email is sent (not when it is queued), so a wording fix
//! reaches emails still waiting. Money is in integer minor units with its
//! currency and is shown as `1,234.56 USD` (unambiguous, unlike `$`); dates
//! are UTC.

use super::{EmailData, Kind};

pub struct Rendered {
    pub subject: String,
    pub body: String,
}

/// Decimal places Stripe uses for a currency's amounts (its "minor units"):
/// zero-decimal and three-decimal currencies are listed in Stripe's currency
/// documentation; every other currency has two.
pub fn exponent(currency: &str) -> u32 {
    const ZERO: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    const THREE: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];
    let currency = currency.to_ascii_lowercase();
    if ZERO.contains(&currency.as_str()) {
        0
    } else if THREE.contains(&currency.as_str()) {
        3
    } else {
        2
    }
}

/// `1999, "usd"` → `19.99 USD`; `1999, "jpy"` → `1,999 JPY`. Exact: integer
/// arithmetic only.
pub fn money(minor: i64, currency: &str) -> String {
    let exponent = exponent(currency);
    let scale = 10_u64.pow(exponent);
    let magnitude = minor.unsigned_abs();
    let (major, fraction) = (magnitude / scale, magnitude % scale);
    let digits = major.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if minor < 0 { "-" } else { "" };
    let code = currency.to_ascii_uppercase();
    if exponent == 0 {
        format!("{sign}{grouped} {code}")
    } else {
        format!(
            "{sign}{grouped}.{fraction:0width$} {code}",
            width = exponent as usize
        )
    }
}

/// A Stripe timestamp as `November 22, 2026` (UTC).
pub fn date(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0).map_or_else(
        || "an unknown date".into(),
        |t| t.format("%B %-d, %Y").to_string(),
    )
}

/// `sender` signs the email (the display name of `EMAIL_FROM`).
pub fn render(kind: Kind, data: &EmailData, sender: &str) -> Rendered {
    let amount = match (data.amount, data.currency.as_deref()) {
        (Some(amount), Some(currency)) => Some(money(amount, currency)),
        _ => None,
    };
    let invoice = data
        .invoice_number
        .as_deref()
        .map_or_else(|| "your invoice".to_string(), |n| format!("invoice {n}"));
    let plan = data.plan.as_deref().map_or_else(
        || "subscription".to_string(),
        |p| format!("{p} subscription"),
    );
    let mut lines: Vec<String> = vec!["Hello,".into(), String::new()];
    let subject = match kind {
        Kind::PaymentFailed => {
            lines.push(match &amount {
                Some(amount) => {
                    format!("We could not collect your payment of {amount} for {invoice}.")
                }
                None => format!("We could not collect the payment for {invoice}."),
            });
            if data.for_subscription {
                lines.push("Your subscription's paid features are paused until it is paid.".into());
            }
            lines.push("To pay it or change your payment method:".into());
            lines.push(String::new());
            if let Some(url) = &data.hosted_invoice_url {
                lines.push(url.clone());
                lines.push(String::new());
            }
            if let Some(next) = data.next_payment_attempt {
                lines.push(format!("We will try again on {}.", date(next)));
                lines.push(String::new());
            }
            match &amount {
                Some(amount) => format!("Your payment of {amount} failed"),
                None => "Your payment failed".into(),
            }
        }
        Kind::Receipt => {
            let when = data
                .paid_at
                .map(|t| format!(" on {}", date(t)))
                .unwrap_or_default();
            lines.push(match &amount {
                Some(amount) => {
                    format!("Thank you: we received your payment of {amount}{when} for {invoice}.")
                }
                None => format!("Thank you: we received your payment{when} for {invoice}."),
            });
            lines.push(String::new());
            if let Some(url) = &data.hosted_invoice_url {
                lines.push("Your invoice and receipt:".into());
                lines.push(url.clone());
                lines.push(String::new());
            }
            match &amount {
                Some(amount) => format!("Receipt for your payment of {amount}"),
                None => "Receipt for your payment".into(),
            }
        }
        Kind::TrialEnding => {
            let end = data
                .trial_end
                .map_or_else(|| "soon".to_string(), |t| format!("on {}", date(t)));
            lines.push(format!("Your free trial of the {plan} ends {end}."));
            lines.push(
                "To keep your access after that, make sure a payment method is on file; \
                 if you do not want to continue, cancel before then and nothing is charged."
                    .into(),
            );
            lines.push(String::new());
            format!("Your trial ends {end}")
        }
        Kind::Cancellation => {
            let when = data
                .ended_at
                .map(|t| format!(" on {}", date(t)))
                .unwrap_or_default();
            lines.push(format!(
                "Your {plan} was canceled{when}. Nothing more will be charged."
            ));
            lines.push("You are welcome back at any time.".into());
            lines.push(String::new());
            format!("Your {plan} has been canceled")
        }
        Kind::CancellationScheduled => {
            let end = data.period_end.map_or_else(
                || "at the end of the current period".to_string(),
                |t| format!("on {}", date(t)),
            );
            lines.push(format!(
                "As requested, your {plan} will not renew: it ends {end}, and you keep your access until then."
            ));
            lines.push("Nothing more will be charged. Changed your mind? You can resume it before it ends.".into());
            lines.push(String::new());
            format!("Your {plan} ends {end}")
        }
    };
    lines.push(format!("-- {sender}"));
    let mut body = lines.join("\n");
    body.push('\n');
    Rendered { subject, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_uses_the_currency_minor_units() {
        assert_eq!(money(1999, "usd"), "19.99 USD");
        assert_eq!(money(5, "eur"), "0.05 EUR");
        assert_eq!(money(123_456_789, "gbp"), "1,234,567.89 GBP");
        assert_eq!(money(1999, "jpy"), "1,999 JPY");
        assert_eq!(money(0, "krw"), "0 KRW");
        assert_eq!(money(12_345, "KWD"), "12.345 KWD");
        assert_eq!(money(-250, "usd"), "-2.50 USD");
        assert_eq!(money(100_000, "usd"), "1,000.00 USD");
        assert_eq!(money(i64::MIN, "usd"), "-92,233,720,368,547,758.08 USD");
    }

    #[test]
    fn dates_are_spelled_out_in_utc() {
        assert_eq!(date(1_763_769_600), "November 22, 2025");
        assert_eq!(date(0), "January 1, 1970");
    }

    #[test]
    fn a_failed_payment_says_how_much_and_where_to_pay() {
        let data = EmailData {
            amount: Some(24_900),
            currency: Some("usd".into()),
            invoice_number: Some("F612594F-0002".into()),
            hosted_invoice_url: Some("https://invoice.stripe.com/i/x".into()),
            next_payment_attempt: Some(1_745_552_783),
            for_subscription: true,
            ..EmailData::default()
        };
        let email = render(Kind::PaymentFailed, &data, "Tollgate");
        assert_eq!(email.subject, "Your payment of 249.00 USD failed");
        assert!(
            email
                .body
                .contains("payment of 249.00 USD for invoice F612594F-0002")
        );
        assert!(email.body.contains("features are paused"));
        assert!(email.body.contains("\nhttps://invoice.stripe.com/i/x\n"));
        assert!(email.body.contains("try again on April 25, 2025"));
        assert!(email.body.ends_with("-- Tollgate\n"));
    }

    #[test]
    fn every_kind_renders_without_optional_data() {
        for kind in Kind::ALL {
            let email = render(kind, &EmailData::default(), "Billing");
            assert!(!email.subject.is_empty());
            assert!(email.body.starts_with("Hello,"), "{kind:?}");
        }
        let trial = EmailData {
            trial_end: Some(1_763_769_600),
            plan: Some("Pro".into()),
            ..EmailData::default()
        };
        assert_eq!(
            render(Kind::TrialEnding, &trial, "B").subject,
            "Your trial ends on November 22, 2025"
        );
        let ending = EmailData {
            period_end: Some(1_763_769_600),
            plan: Some("Pro".into()),
            ..EmailData::default()
        };
        assert_eq!(
            render(Kind::CancellationScheduled, &ending, "B").subject,
            "Your Pro subscription ends on November 22, 2025"
        );
    }
}
