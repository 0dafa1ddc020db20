//! `tollgate test-users`: who gets full access without paying (QA, demos), until
//! when, and why — recorded in `test_users` with who granted and who revoked.

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tollgate_entitlements::test_users::{self, RuleKind};

pub const USAGE: &str = "\
  tollgate test-users list [--all]
  tollgate test-users grant (--user-id ID | --email ADDRESS | --domain DOMAIN) --reason TEXT
                            (--until RFC3339 | --days N) [--tier TIER] [--by NAME]
  tollgate test-users revoke <id> [--by NAME]
      Test users get full access (the tier given, else the highest) and test_user = true
      in every entitlements answer until they expire (DATABASE_URL). A domain matches its
      addresses; *.example.com matches its subdomains'.";

fn flag<'a>(args: &'a [String], name: &str) -> anyhow::Result<Option<&'a str>> {
    match args.iter().position(|a| a == name) {
        Some(i) => Ok(Some(
            args.get(i + 1)
                .map(String::as_str)
                .with_context(|| format!("{name} needs a value"))?,
        )),
        None => Ok(None),
    }
}

fn operator(args: &[String]) -> anyhow::Result<String> {
    Ok(match flag(args, "--by")? {
        Some(by) => by.to_string(),
        None => std::env::var("USER").unwrap_or_else(|_| "operator".into()),
    })
}

/// The rule a grant asks for: (kind, value, expiry).
pub fn parse_grant(
    args: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<(RuleKind, String, DateTime<Utc>)> {
    let chosen: Vec<(RuleKind, &str)> = [
        (RuleKind::UserId, flag(args, "--user-id")?),
        (RuleKind::Email, flag(args, "--email")?),
        (RuleKind::EmailDomain, flag(args, "--domain")?),
    ]
    .into_iter()
    .filter_map(|(kind, value)| value.map(|v| (kind, v)))
    .collect();
    let [(kind, value)] = chosen.as_slice() else {
        bail!("give exactly one of --user-id, --email, --domain");
    };
    if *kind == RuleKind::Email && !value.contains('@') {
        bail!("--email needs an address");
    }
    if *kind == RuleKind::EmailDomain && (value.contains('@') || !value.contains('.')) {
        bail!("--domain needs a domain such as example.com or *.example.com");
    }
    let until = match (flag(args, "--until")?, flag(args, "--days")?) {
        (Some(until), None) => DateTime::parse_from_rfc3339(until)
            .context("--until is an RFC 3339 time, e.g. 2026-12-31T23:59:59Z")?
            .with_timezone(&Utc),
        (None, Some(days)) => {
            let days: i64 = days.parse().context("--days is a number")?;
            now + chrono::Duration::days(days)
        }
        _ => bail!("give one of --until or --days: test access always expires"),
    };
    if until <= now {
        bail!("the expiry is in the past");
    }
    Ok((*kind, value.to_string(), until))
}

pub async fn run(pool: &PgPool, args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("list") => {
            let all = args.iter().any(|a| a == "--all");
            println!(
                "{:>5}  {:<12}  {:<32}  {:<10}  {:<25}  {:<16}  {:<16}  reason",
                "id", "kind", "value", "tier", "expires", "granted by", "revoked by"
            );
            for rule in test_users::list(pool, all).await? {
                println!(
                    "{:>5}  {:<12}  {:<32}  {:<10}  {:<25}  {:<16}  {:<16}  {}",
                    rule.id,
                    rule.kind,
                    rule.value,
                    rule.tier.as_deref().unwrap_or("(top)"),
                    rule.expires_at.to_rfc3339(),
                    rule.granted_by,
                    rule.revoked_by.as_deref().unwrap_or("-"),
                    rule.reason,
                );
            }
        }
        Some("grant") => {
            let (kind, value, until) = parse_grant(args, Utc::now())?;
            let reason = flag(args, "--reason")?.context("--reason is required (it is audited)")?;
            let id = test_users::grant(
                pool,
                kind,
                &value,
                flag(args, "--tier")?,
                until,
                &operator(args)?,
                reason,
            )
            .await?;
            println!("test-user rule {id} granted until {}", until.to_rfc3339());
        }
        Some("revoke") => {
            let id: i64 = args
                .get(1)
                .context("which rule? (tollgate test-users list)")?
                .parse()
                .context("a rule id is a number")?;
            if test_users::revoke(pool, id, &operator(args)?).await? {
                println!("test-user rule {id} revoked");
            } else {
                bail!("rule {id} is not active (unknown, or already revoked)");
            }
        }
        _ => bail!("usage:\n{USAGE}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn grants_name_one_subject_and_an_expiry() {
        let now = Utc::now();
        let (kind, value, until) =
            parse_grant(&args("grant --domain *.qa.example.com --days 7"), now).unwrap();
        assert_eq!(
            (kind, value.as_str()),
            (RuleKind::EmailDomain, "*.qa.example.com")
        );
        assert_eq!(until, now + chrono::Duration::days(7));
        let (kind, _, until) = parse_grant(
            &args("grant --user-id u1 --until 2999-01-01T00:00:00Z"),
            now,
        )
        .unwrap();
        assert_eq!(kind, RuleKind::UserId);
        assert_eq!(until.to_rfc3339(), "2999-01-01T00:00:00+00:00");
        for bad in [
            "grant --days 7",
            "grant --user-id u1 --email a@b.c --days 7",
            "grant --user-id u1",
            "grant --email nobody --days 7",
            "grant --domain a@b.c --days 7",
            "grant --user-id u1 --until 2000-01-01T00:00:00Z",
        ] {
            assert!(parse_grant(&args(bad), now).is_err(), "{bad}");
        }
    }
}
