//! Replays every committed seed (`fuzz/seeds/<target>/`) and every input a fuzzer
//! once failed on (`fuzz/regressions/<target>/`) through the checks the fuzz
//! targets run, so `cargo test` keeps them passing on the stable toolchain.

use std::path::{Path, PathBuf};

use tollgate_fuzz_properties::TARGETS;
use tollgate_test_support::workspace_root;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

fn replay(kind: &str, least: usize) {
    for (target, check) in TARGETS {
        let dir = workspace_root().join("fuzz").join(kind).join(target);
        let inputs = files(&dir);
        assert!(
            inputs.len() >= least,
            "{} holds {} inputs",
            dir.display(),
            inputs.len()
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target} fails on {}", input.display());
        }
    }
}

#[test]
fn every_seed_passes_its_target() {
    replay("seeds", 5);
}

#[test]
fn every_regression_passes_its_target() {
    replay("regressions", 0);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in TARGETS {
        let path = workspace_root().join(format!("fuzz/fuzz_targets/{target}.rs"));
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.contains(&format!("{target}::check")),
            "{} runs another check",
            path.display()
        );
    }
}
