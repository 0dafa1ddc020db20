//! Tollgate entitlements: answers "may this user use this feature now?" over
//! gRPC (and gRPC-Web) from an in-process cache of billing's state, kept fresh by
//! billing's change feed and checked against its versions; credits and usage
//! quotas on top. See docs/entitlements.md.

pub mod auth;
pub mod cache;
pub mod config;
pub mod credits;
pub mod error;
pub mod feed;
pub mod model;
pub mod quotas;
pub mod rules;
pub mod service;
pub mod startup;
pub mod store;
pub mod test_users;
pub mod tracker;

pub use config::Config;
pub use startup::Application;
