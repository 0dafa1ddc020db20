//! Fuzzes the event envelope ingest and billing read; the properties are in
//! crates/fuzz-properties/src/envelope.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz_properties::envelope;

fuzz_target!(|data: &[u8]| envelope::check(data));
