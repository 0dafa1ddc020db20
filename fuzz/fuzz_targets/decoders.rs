//! Fuzzes billing's decoding of each event type's data.object; the properties are in
//! crates/fuzz-properties/src/decoders.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz_properties::decoders;

fuzz_target!(|data: &[u8]| decoders::check(data));
