//! Fuzzes Stripe-Signature parsing, rendering, verifying and signing; the properties are in
//! crates/fuzz-properties/src/signature.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate_fuzz_properties::signature;

fuzz_target!(|data: &[u8]| signature::check(data));
