//! Fuzzes fulfillment's Dialogflow ES / CX request parser and answer rendering; the properties are in
//! crates/fuzz-properties/src/dialogflow.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz_properties::dialogflow;

fuzz_target!(|data: &[u8]| dialogflow::check(data));
