//! Rally's wire protocol, gRPC package `rally.v1`, generated from `proto/rally/v1/*.proto`.
//!
//! # Layout
//!
//! - [`v1`]: the generated messages and the `Ingest` service (client and server).
//! - [`encoded`]: the `Ingest/Stream` call for a client that encodes its messages
//!   beforehand (the agent, the load generator).
//!
//! This crate has no logic: conversions to domain types live in the agent and the
//! collector, at their edges.

pub mod encoded;

/// Generated code for package `rally.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("rally.v1");
}
