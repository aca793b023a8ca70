//! The PromQL planner reads downsampled data through a cluster: a one-node cluster whose shard
//! holds old raw blocks with their 5 m and 1 h versions answers a 30-day range query from the
//! coarse data (with the info annotation), and the same values as its single Db would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on failure by design

mod common;

use std::collections::BTreeMap;

use tidemark_cluster::storage::ClusterStorage;
use tidemark_model::{Labels, Sample};
use tidemark_promql::{Engine, EngineOptions, MaxSourceResolution, QueryParams, Value};
use tidemark_tsdb::Db;
use tidemark_tsdb::block::BlockWriter;
use tidemark_tsdb::downsample::{self, DownsampleOptions};

const H: i64 = 3_600_000;
const DAY: i64 = 24 * H;

/// 4 counters over 30 days at 60 s, written as day blocks into `dir` and downsampled (5 m
/// after 40 h, 1 h after 10 d, as the defaults).
fn write_history(dir: &std::path::Path) -> (i64, BTreeMap<Labels, Vec<Sample>>) {
    let newest = 30 * DAY;
    let mut data = BTreeMap::new();
    for i in 0..4 {
        let l = Labels::from_pairs([("__name__", "c_total".to_string()), ("i", i.to_string())]);
        let s: Vec<Sample> = (0..newest / 60_000)
            .map(|k| Sample::new(k * 60_000, (k * (i + 1)) as f64))
            .collect();
        data.insert(l, s);
    }
    let mut start = 0;
    while start < newest {
        let mut w = BlockWriter::new(dir, start, start + DAY).unwrap();
        for (l, s) in &data {
            let part: Vec<Sample> = s
                .iter()
                .copied()
                .filter(|x| x.t >= start && x.t < start + DAY)
                .collect();
            w.add_samples(l, &part).unwrap();
        }
        w.finish().unwrap();
        start += DAY;
    }
    let opts = DownsampleOptions {
        to_5m_after_ms: 40 * H,
        to_1h_after_ms: 10 * DAY,
    };
    downsample::run(dir, newest - 1, &opts).unwrap();
    (newest, data)
}

fn matrix(r: tidemark_promql::QueryResult) -> BTreeMap<Labels, Vec<Sample>> {
    let Value::Matrix(m) = r.value else {
        panic!("not a matrix")
    };
    m.into_iter().map(|s| (s.labels, s.samples)).collect()
}

#[test]
fn planner_reads_downsampled_shards() {
    let dir = tempfile::tempdir().unwrap();
    // The shard's data directory, filled before the node opens it.
    let shard_data = dir.path().join("shards").join("0").join("data");
    std::fs::create_dir_all(&shard_data).unwrap();
    let (newest, _) = write_history(&shard_data);
    // The same history in a plain Db, for the expected answer.
    let plain_dir = tempfile::tempdir().unwrap();
    write_history(plain_dir.path());
    let plain = Db::open(plain_dir.path(), common::db_opts()).unwrap();

    let rt = common::runtime();
    let node = common::one_member_node(&rt, dir.path(), |_| {});
    let storage = ClusterStorage::new(node.clone(), rt.handle().clone());

    let engine = Engine::new(EngineOptions::default());
    let q = "rate(c_total[6h])";
    let (start, end, step) = (DAY, newest - 1, H);
    let auto = QueryParams::default();
    let raw = QueryParams {
        max_source_resolution: Some(MaxSourceResolution::Raw),
        ..QueryParams::default()
    };
    let got = engine
        .range_query(&storage, q, start, end, step, &auto)
        .unwrap();
    assert!(
        got.infos.iter().any(|i| i.contains("downsampled")),
        "no downsampled read announced: {:?}",
        got.infos
    );
    let want = engine
        .range_query(&plain, q, start, end, step, &auto)
        .unwrap();
    assert_eq!(got.infos, want.infos);
    let (got, want) = (matrix(got), matrix(want));
    assert_eq!(got.len(), 4);
    assert_eq!(
        got, want,
        "the cluster and a plain Db plan and answer alike"
    );
    // Forced raw reads raw data only: no annotation, and the rates agree closely (steady
    // counters: the downsampled rate is exact up to the window edges).
    let raw_got = engine
        .range_query(&storage, q, start, end, step, &raw)
        .unwrap();
    assert!(
        !raw_got.infos.iter().any(|i| i.contains("downsampled")),
        "{:?}",
        raw_got.infos
    );
    let raw_got = matrix(raw_got);
    for (l, s) in &got {
        let r = &raw_got[l];
        let last = s.last().unwrap();
        let rl = r.iter().find(|x| x.t == last.t).unwrap();
        assert!(
            (last.v - rl.v).abs() <= rl.v.abs() * 0.05,
            "{l}: downsampled {} vs raw {}",
            last.v,
            rl.v
        );
    }
    rt.block_on(node.shutdown());
}
