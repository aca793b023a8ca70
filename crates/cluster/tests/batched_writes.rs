//! Scrape writes (`Appendable::batching_appender`) on a one-member cluster: commits that
//! arrive together share Raft entries, every sample becomes visible, and a queued write that
//! no leader takes is counted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tidemark_cluster::batch::BatchBuilder;
use tidemark_cluster::storage::ClusterStorage;
use tidemark_model::{Labels, Matcher};
use tidemark_storage::{Appendable, Queryable};

fn stored_samples(storage: &ClusterStorage) -> usize {
    let q = storage.querier(i64::MIN, i64::MAX).unwrap();
    let mut n = 0;
    for s in q.select(false, None, &[Matcher::equal("__name__", "up_like")]) {
        let s = s.unwrap();
        let mut it = s.iter();
        while it.next() {
            n += 1;
        }
    }
    n
}

#[test]
fn scrape_commits_arriving_together_share_raft_entries_and_all_become_visible() {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let node = common::one_member_node(&rt, dir.path(), |o| {
        o.write_batch_window = Duration::from_millis(300);
    });
    let storage = ClusterStorage::new(node.clone(), rt.handle().clone());
    let index = || {
        node.shard(0)
            .unwrap()
            .raft
            .metrics()
            .borrow()
            .last_log_index
            .unwrap_or(0)
    };
    let before = index();
    // 20 "targets" commit 10 series each at once, from their own threads.
    let commits = 20;
    std::thread::scope(|s| {
        for t in 0..commits {
            let storage = storage.clone();
            s.spawn(move || {
                let mut app = storage.batching_appender();
                for i in 0..10 {
                    let l = Labels::from_pairs([
                        ("__name__", "up_like".to_string()),
                        ("target", t.to_string()),
                        ("i", i.to_string()),
                    ]);
                    app.append(None, &l, 1_000, f64::from(i)).unwrap();
                }
                app.commit().unwrap();
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_samples(&storage) < commits * 10 {
        assert!(
            Instant::now() < deadline,
            "queued samples never became visible"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(stored_samples(&storage), commits * 10);
    let entries = index() - before;
    assert!(
        entries < commits as u64 / 2,
        "{commits} commits took {entries} Raft entries: they were not batched"
    );
    assert_eq!(node.stats.batched_failed.load(Relaxed), 0);
    rt.block_on(node.shutdown());
}

#[test]
fn a_queued_write_no_leader_takes_is_counted_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = common::runtime();
    let node = common::one_member_node(&rt, dir.path(), |o| {
        o.write_batch_window = Duration::from_millis(10);
        o.write_timeout = Duration::from_millis(300);
    });
    let mut b = BatchBuilder::new();
    b.add(&Labels::from_pairs([("__name__", "x")]), &[(1, 1.0)]);
    // Shard 5 does not exist: no leader ever takes the write.
    let n = node.clone();
    rt.block_on(async move { n.write_batched(vec![(5, b.finish())]).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.stats.batched_failed.load(Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the failed write was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(node.stats.batched_failed.load(Relaxed), 1);
    rt.block_on(node.shutdown());
}
