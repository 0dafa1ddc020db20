//! What every Tollgate service does the same way: read typed configuration from
//! the environment, set up tracing / OpenTelemetry / Prometheus, and wait for a
//! shutdown signal. No broker, database or Stripe code lives here, so a change
//! in it rebuilds little.

pub mod config;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;

pub use config::{ConfigError, Env};
pub use telemetry::{Telemetry, TelemetryError};
