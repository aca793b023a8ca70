//! A one-member cluster node on a loopback port, for the integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test helpers panic on failure by design

use std::sync::Arc;

use tidemark_cluster::node::{ClusterOptions, Node};
use tidemark_tsdb::DbOptions;

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A two-worker runtime for a node in a test.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Engine options without background work (tests drive everything).
pub(crate) fn db_opts() -> DbOptions {
    DbOptions {
        background_maintenance: false,
        downsampling: false,
        retention_time_ms: 0,
        retention_5m_ms: 0,
        retention_1h_ms: 0,
        wal: false,
        ..DbOptions::default()
    }
}

/// Starts node 1 alone with one shard in `dir` (after `tune` adjusts its options) and waits
/// until it leads the shard.
pub(crate) fn one_member_node(
    rt: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut ClusterOptions),
) -> Arc<Node> {
    let port = free_port();
    let mut opts = ClusterOptions::new(
        1,
        format!("127.0.0.1:{port}").parse().unwrap(),
        [(1, format!("127.0.0.1:{port}"))].into(),
        dir.to_path_buf(),
    );
    opts.num_shards = 1;
    opts.replication_factor = 1;
    opts.db = db_opts();
    tune(&mut opts);
    let node = rt.block_on(Node::start(opts)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while node
        .shard(0)
        .unwrap()
        .raft
        .metrics()
        .borrow()
        .current_leader
        != Some(1)
    {
        assert!(std::time::Instant::now() < deadline, "no leader");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    node
}
