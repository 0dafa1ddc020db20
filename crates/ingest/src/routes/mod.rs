mod health;
mod webhook;

pub use health::{healthz, metrics, readyz};
pub use webhook::{IngestState, receive_webhook};
