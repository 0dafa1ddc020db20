//! Tollgate fulfillment: the Dialogflow ES and CX webhook that answers billing
//! questions (status, features, credits) from entitlements and hands out checkout
//! and Customer Portal links from billing. See docs/fulfillment.md.

pub mod answers;
pub mod auth;
pub mod config;
pub mod dialogflow;
pub mod error;
pub mod intents;
pub mod routes;
pub mod startup;
pub mod upstream;

pub use config::Config;
pub use startup::Application;
