//! `tollgate-bench all`: every benchmark in one run, written to `docs/benchmarks.md`
//! with the machine it ran on, and quoted into the README between two markers.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

/// One measured figure beside its in-run baseline and its goal.
#[derive(Debug, Clone)]
pub struct Figure {
    pub bench: &'static str,
    pub what: String,
    pub measured: String,
    /// The baseline measured in the same run, if the figure is relative to one.
    pub baseline: String,
    pub ratio: Option<f64>,
    pub goal: String,
    pub met: bool,
}

impl Figure {
    pub fn new(bench: &'static str, what: impl Into<String>) -> Self {
        Self {
            bench,
            what: what.into(),
            measured: String::new(),
            baseline: "–".into(),
            ratio: None,
            goal: "–".into(),
            met: true,
        }
    }

    pub fn measured(mut self, measured: impl Into<String>) -> Self {
        self.measured = measured.into();
        self
    }

    pub fn baseline(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = Some(ratio);
        self
    }

    pub fn goal(mut self, goal: impl Into<String>, met: bool) -> Self {
        self.goal = goal.into();
        self.met = met;
        self
    }
}

/// `12345.6` → `12,346/s`.
pub fn per_second(rate: f64) -> String {
    format!("{}/s", thousands(rate.round() as u64))
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// What the figures were measured on.
pub struct Machine {
    pub facts: Vec<(&'static str, String)>,
}

impl Machine {
    pub async fn describe(database_url: &str) -> Self {
        let mut facts = Vec::new();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        facts.push(("CPU", format!("{cpu}, {cores} core(s) available")));
        let memory = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("MemTotal"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kib| kib.parse::<u64>().ok())
            })
            .map_or_else(
                || "unknown".into(),
                |kib| format!("{:.1} GiB", kib as f64 / 1048576.0),
            );
        facts.push(("Memory", memory));
        facts.push(("Kernel", command_line("uname", &["-sr"])));
        facts.push(("Rust", command_line("rustc", &["--version"])));
        let postgres = match sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(database_url)
            .await
        {
            Ok(pool) => sqlx::query_scalar::<_, String>("SHOW server_version")
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| format!("unknown ({e})")),
            Err(e) => format!("unknown ({e})"),
        };
        facts.push(("PostgreSQL", postgres));
        facts.push((
            "RabbitMQ",
            command_line("rabbitmqctl", &["version"])
                .lines()
                .next()
                .unwrap_or("unknown")
                .to_string(),
        ));
        facts.push(("Redis", command_line("redis-server", &["--version"])));
        let commit = command_line("git", &["rev-parse", "--short", "HEAD"]);
        let dirty = std::process::Command::new("git")
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .is_ok_and(|o| !o.stdout.is_empty());
        facts.push((
            "Commit",
            if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            },
        ));
        facts.push(("Date", command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"])));
        Self { facts }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The figures as one Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let mut out = String::from(
        "| bench | figure | measured | in-run baseline | ratio | goal | |\n|---|---|---:|---:|---:|---|---|\n",
    );
    for f in figures {
        let ratio = f
            .ratio
            .map_or_else(|| "–".to_string(), |r| format!("{r:.2}"));
        let verdict = if f.goal == "–" {
            ""
        } else if f.met {
            "met"
        } else {
            "**not met**"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            f.bench, f.what, f.measured, f.baseline, ratio, f.goal, verdict
        );
    }
    out
}

/// `docs/benchmarks.md`: the table, the machine, the command.
pub fn document(figures: &[Figure], machine: &Machine, command: &str) -> String {
    let mut out = String::from(
        "# Benchmarks\n\n\
         Written by `make bench` (`tollgate-bench all`); do not edit by hand. Every figure \
         is measured against a baseline taken in the same run on the same machine (the raw \
         broker, pgbench, a bare gRPC echo server), so the ratio says how close a service \
         comes to what the machine itself can do. Client, services, PostgreSQL, RabbitMQ \
         and Redis share the machine below; figures from a busy machine are not \
         comparable.\n\n",
    );
    out.push_str(&table(figures));
    out.push_str("\n## Machine\n\n| | |\n|---|---|\n");
    for (name, value) in &machine.facts {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    let _ = write!(
        out,
        "\n## Reproduce\n\n```\n{command}\n```\n\n\
         Each service's benchmark also runs alone, with its options: `make bench-ingest`, \
         `make bench-billing`, `make bench-entitlements` (see the README).\n"
    );
    out
}

const BEGIN: &str = "<!-- benchmarks:begin (written by make bench) -->";
const END: &str = "<!-- benchmarks:end -->";

/// Replaces what lies between the README's markers with `quote`.
pub fn quote_in_readme(readme: &Path, quote: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(readme).with_context(|| readme.display().to_string())?;
    let (Some(begin), Some(end)) = (text.find(BEGIN), text.find(END)) else {
        anyhow::bail!(
            "{} has no `{BEGIN}` … `{END}` markers to quote the figures between",
            readme.display()
        );
    };
    anyhow::ensure!(
        begin < end,
        "the README's benchmark markers are out of order"
    );
    let updated = format!("{}{BEGIN}\n{quote}{}", &text[..begin], &text[end..]);
    std::fs::write(readme, updated)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_quote_replaces_only_what_lies_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let readme = dir.join("README.md");
        std::fs::write(&readme, format!("before\n{BEGIN}\nold\n{END}\nafter\n")).unwrap();
        quote_in_readme(&readme, "new\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&readme).unwrap(),
            format!("before\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        std::fs::write(&readme, "no markers\n").unwrap();
        assert!(quote_in_readme(&readme, "new\n").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rates_are_rounded_and_grouped_by_thousands() {
        assert_eq!(per_second(16403.6), "16,404/s");
        assert_eq!(per_second(999.4), "999/s");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(0), "0");
    }

    #[test]
    fn a_missed_goal_is_marked_and_a_ratio_has_two_decimals() {
        let figures = [
            Figure::new("ingest", "webhooks/s")
                .measured("9,000/s")
                .baseline("10,000/s", 0.9)
                .goal("≥ 0.85", true),
            Figure::new("entitlements", "Check p99")
                .measured("2.9 ms")
                .goal("≤ 1 ms", false),
        ];
        let table = table(&figures);
        assert!(
            table.contains("| ingest | webhooks/s | 9,000/s | 10,000/s | 0.90 | ≥ 0.85 | met |")
        );
        assert!(
            table.contains("| entitlements | Check p99 | 2.9 ms | – | – | ≤ 1 ms | **not met** |")
        );
    }
}
