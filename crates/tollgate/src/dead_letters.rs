//! `tollgate dead-letters`: list, inspect and replay the events billing gave up on.
//! The logic lives in billing's library (`tollgate_billing::dead_letters`), shared with
//! billing's admin HTTP API.

pub use tollgate_billing::dead_letters::*;
