//! openraft's type configuration for a shard group, and the data its log entries carry.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Node ids are the `--cluster.node-id` numbers.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Types of every shard's Raft group.
    pub TypeConfig:
        D = Batch,
        R = ApplyResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;

/// A write batch, encoded as in [`crate::batch`]: what one Raft entry carries. Serialized as a
/// byte string (MessagePack `bin`), not as an array of numbers.
/// A Raft entry's payload: a write batch (docs/format/cluster.md). Reference-counted, so the
/// log store's tail cache, replication and apply share one copy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Batch(pub bytes::Bytes);

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Batch({} bytes)", self.0.len())
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl Serialize for Batch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Batch, E> {
                Ok(Batch(bytes::Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Batch, E> {
                Ok(Batch(v.into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Batch, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Batch(out.into()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What applying one entry did on the replica that answers the client (the leader).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyResult {
    pub accepted: u64,
    pub rejected: u64,
    /// The first per-sample error (out of order, duplicate timestamp, ...), if any.
    pub first_error: Option<String>,
}

/// MessagePack encoding shared by the log store and the RPCs (maps with field names, so that
/// openraft's serde attributes round-trip).
pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    rmp_serde::to_vec_named(v)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    b: &[u8],
) -> Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(b)
}
