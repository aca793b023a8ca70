//! tidemark-cluster: Raft-replicated shards (openraft), write routing and read fan-out, behind
//! the same storage traits a single node uses. See docs/cluster.md.

// openraft fixes the error type of its storage traits (StorageError, ~224 bytes).
#![allow(clippy::result_large_err)]

pub mod batch;
pub mod extras;
pub mod log_store;
pub mod network;
pub mod node;
pub mod read_index;
pub mod state_machine;
pub mod storage;
pub mod types;

/// Generated gRPC code for proto/tidemark/cluster/v1/cluster.proto.
#[allow(
    clippy::all,
    unreachable_pub,
    missing_debug_implementations,
    missing_docs
)]
pub mod pb {
    tonic::include_proto!("tidemark.cluster.v1");
}
