//! What every Tollgate service does the same way: read typed configuration from
//! the environment, set up tracing / OpenTelemetry / Prometheus, wait for a
//! shutdown signal, read a request body under a size limit. No broker, database
//! or Stripe code lives here, so a change in it rebuilds little.

pub mod body;
pub mod config;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;

pub use body::{BodyError, read_limited};
pub use config::{ConfigError, Env};
pub use telemetry::{Telemetry, TelemetryError};
