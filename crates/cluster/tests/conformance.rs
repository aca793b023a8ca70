//! openraft's storage conformance suite on the shard log store (the tsdb log) and state machine
//! (the shard's Db).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use openraft::testing::{StoreBuilder, Suite};
use tidemark_cluster::log_store::LogStore;
use tidemark_cluster::state_machine::StateMachine;
use tidemark_cluster::types::{StorageError, TypeConfig};
use tidemark_tsdb::DbOptions;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let log = LogStore::open(&dir.path().join("raft"), 1 << 20).unwrap();
        let sm = StateMachine::open(
            dir.path(),
            DbOptions {
                background_maintenance: false,
                ..DbOptions::default()
            },
        )?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).unwrap();
}
