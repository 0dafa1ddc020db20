//! Tollgate's gRPC APIs, generated from `proto/` at build time (server and client).
//!
//! ```no_run
//! use tollgate_proto::entitlements::v1::{CheckRequest, entitlements_client::EntitlementsClient};
//! # async fn example(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
//! let mut client = EntitlementsClient::new(channel);
//! let answer = client
//!     .check(CheckRequest { subject: "user_42".into(), feature: "docs.read".into(), at_least_version: 0 })
//!     .await?
//!     .into_inner();
//! # let _ = answer; Ok(()) }
//! ```

pub mod entitlements {
    pub mod v1 {
        tonic::include_proto!("tollgate.entitlements.v1");
    }
}

/// The encoded descriptor set of every proto file here (for gRPC server reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tollgate_descriptor");
