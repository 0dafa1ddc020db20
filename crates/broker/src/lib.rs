//! RabbitMQ for Tollgate: connecting, declaring the shared topology, and a
//! publisher that only reports success once the broker has confirmed a message.

pub mod publisher;
pub mod topology;
pub mod trace;

pub use lapin;
pub use publisher::{PublishError, Publisher, PublisherConfig};
pub use topology::declare_topology;

use lapin::{Connection, ConnectionProperties};

/// Opens a connection named after the service (visible in the management UI).
pub async fn connect(url: &str, connection_name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    Connection::connect(url, properties).await
}
