//! The properties the fuzz targets in `fuzz/` check (docs/fuzzing.md), one function
//! per target. Each takes the fuzzer's bytes and panics when a property does not
//! hold; "does not panic" is the least of them. They live here, in the main
//! workspace, so that `cargo test` replays the committed seeds and regressions
//! through exactly what the fuzzer runs, on the stable toolchain.

pub mod decoders;
pub mod dialogflow;
pub mod envelope;
pub mod signature;

/// A target's check of one input: panics when a property does not hold.
pub type Check = fn(&[u8]);

/// Every target: its name (a `fuzz/fuzz_targets/<name>.rs` and `fuzz/seeds/<name>/`)
/// and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("signature", signature::check),
    ("envelope", envelope::check),
    ("decoders", decoders::check),
    ("dialogflow", dialogflow::check),
];
