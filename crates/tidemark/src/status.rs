//! Engine-side helpers for the API: `/api/v1/status/tsdb`, snapshots and the engine's own
//! metrics.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use tidemark_api::TsdbStatus;
use tidemark_api::providers::{HeadStats, ResolutionBlocks, Stat, TidemarkTsdbStatus};
use tidemark_model::{MatchType, Matcher};
use tidemark_storage::{Error, Queryable};
use tidemark_tsdb::Db;

fn top(map: HashMap<String, u64>, limit: usize) -> Vec<Stat> {
    let mut v: Vec<Stat> = map
        .into_iter()
        .map(|(name, value)| Stat { name, value })
        .collect();
    v.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
    v.truncate(limit);
    v
}

/// Cardinality statistics over the head, computed by walking its series (as Prometheus does
/// over its head index), plus the blocks per resolution under `tidemark` (docs/api.md).
pub(crate) fn tsdb_status(db: &Db, limit: usize) -> Result<TsdbStatus, Error> {
    let st = db.stats();
    let (mint, maxt) = (st.head_min_time.unwrap_or(0), st.head_max_time.unwrap_or(0));
    let mut out = cardinality(
        db,
        (mint, maxt),
        st.head_series as u64,
        st.head_chunks_written,
        limit,
    )?;
    out.tidemark = Some(blocks_by_resolution(db)?);
    Ok(out)
}

/// [`tsdb_status`] over any storage: the series with samples in `[mint, maxt]` (the head's
/// range), walked through `store` (a cluster walks every shard through its leader).
pub(crate) fn cardinality(
    store: &dyn Queryable,
    (mint, maxt): (i64, i64),
    head_series: u64,
    head_chunks: u64,
    limit: usize,
) -> Result<TsdbStatus, Error> {
    let q = store.querier(mint, maxt)?;
    let all = Matcher::new(MatchType::Regex, "__name__", ".+")
        .map_err(|e| Error::Other(e.to_string()))?;
    let mut by_metric: HashMap<String, u64> = HashMap::new();
    let mut values_by_name: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    let mut bytes_by_name: HashMap<String, u64> = HashMap::new();
    let mut pairs: HashMap<String, u64> = HashMap::new();
    let mut n = 0u64;
    for s in q.select(false, None, &[all]) {
        let s = s?;
        n += 1;
        let l = s.labels();
        *by_metric
            .entry(l.metric_name().unwrap_or("").to_string())
            .or_default() += 1;
        for x in l.iter() {
            *pairs.entry(format!("{}={}", x.name, x.value)).or_default() += 1;
            if values_by_name
                .entry(x.name.to_string())
                .or_default()
                .insert(x.value.to_string())
            {
                *bytes_by_name.entry(x.name.to_string()).or_default() += x.value.len() as u64;
            }
        }
    }
    let label_pairs: u64 = values_by_name.values().map(|v| v.len() as u64).sum();
    Ok(TsdbStatus {
        head_stats: HeadStats {
            num_series: n.max(head_series),
            num_label_pairs: label_pairs,
            chunk_count: head_chunks,
            min_time: mint,
            max_time: maxt,
        },
        series_count_by_metric_name: top(by_metric, limit),
        label_value_count_by_label_name: top(
            values_by_name
                .into_iter()
                .map(|(k, v)| (k, v.len() as u64))
                .collect(),
            limit,
        ),
        memory_in_bytes_by_label_name: top(bytes_by_name, limit),
        series_count_by_label_value_pair: top(pairs, limit),
        tidemark: None,
    })
}

/// `data.tidemark` of `/api/v1/status/tsdb`: the open blocks per resolution.
pub(crate) fn blocks_by_resolution(db: &Db) -> Result<TidemarkTsdbStatus, Error> {
    let summary = db
        .resolution_summary()
        .map_err(|e| Error::Other(format!("blocks per resolution: {e}")))?;
    Ok(TidemarkTsdbStatus {
        blocks_by_resolution: summary
            .into_iter()
            .map(|r| ResolutionBlocks {
                resolution: tidemark_tsdb::analyze::resolution_name(r.resolution),
                resolution_ms: r.resolution,
                num_blocks: r.blocks,
                min_time: r.min_time,
                max_time: r.max_time,
                num_bytes: r.bytes,
                num_series: r.series,
                num_samples: r.samples,
            })
            .collect(),
    })
}

/// `POST /api/v1/admin/tsdb/snapshot`: cuts the head into blocks (unless `skip_head`), then
/// hard-links every block into `<data>/snapshots/<name>/`, like Prometheus.
pub(crate) fn snapshot(db: &Db, dir: &Path, skip_head: bool) -> Result<String, Error> {
    if !skip_head {
        db.flush_head()
            .map_err(|e| Error::Other(format!("flushing the head: {e}")))?;
    }
    let name = snapshot_name();
    let target = dir.join("snapshots").join(&name);
    std::fs::create_dir_all(&target)?;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        if p.is_dir() && p.join("meta.json").is_file() {
            tidemark_cluster::state_machine::link_dir(&p, &target.join(e.file_name()))?;
        }
    }
    Ok(name)
}

/// A new snapshot's directory name: seconds since the epoch and a random suffix.
pub(crate) fn snapshot_name() -> String {
    format!("{}-{:016x}", chrono_like_now(), rand_u64())
}

fn chrono_like_now() -> String {
    let ms = tidemark_model::time::now_millis();
    format!("{}", ms / 1000)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(tidemark_model::time::now_millis())
}

/// Engine metrics in the Prometheus text format.
pub(crate) fn render_metrics(db: &Db, out: &mut String) {
    let s = db.stats();
    let mut g = |name: &str, help: &str, kind: &str, v: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    g(
        "tidemark_tsdb_head_series",
        "Series in the head.",
        "gauge",
        s.head_series as f64,
    );
    g(
        "tidemark_tsdb_head_samples_appended_total",
        "Samples appended to the head.",
        "counter",
        s.head_samples_appended as f64,
    );
    g(
        "tidemark_tsdb_head_chunks_written_total",
        "Full head chunks written to head-chunk files.",
        "counter",
        s.head_chunks_written as f64,
    );
    g(
        "tidemark_tsdb_blocks_loaded",
        "Blocks loaded.",
        "gauge",
        s.blocks as f64,
    );
    g(
        "tidemark_tsdb_storage_blocks_bytes",
        "Bytes of all blocks.",
        "gauge",
        s.block_bytes as f64,
    );
    g(
        "tidemark_tsdb_log_bytes",
        "Bytes of the write-ahead log.",
        "gauge",
        s.log_bytes as f64,
    );
    if let Some(t) = s.head_min_time {
        g(
            "tidemark_tsdb_head_min_time",
            "Oldest timestamp in the head (ms).",
            "gauge",
            t as f64,
        );
    }
    if let Some(t) = s.head_max_time {
        g(
            "tidemark_tsdb_head_max_time",
            "Newest timestamp in the head (ms).",
            "gauge",
            t as f64,
        );
    }
}

/// A cluster node's metrics: write routing counters, and per hosted shard its Raft state and
/// the head of its Db.
pub(crate) fn render_cluster_metrics(node: &tidemark_cluster::node::Node, out: &mut String) {
    use std::sync::atomic::Ordering::Relaxed;
    let st = &node.stats;
    let counters = [
        (
            "tidemark_cluster_write_batches_total",
            "Shard write batches acknowledged by a quorum.",
            st.batches.load(Relaxed),
        ),
        (
            "tidemark_cluster_samples_accepted_total",
            "Samples accepted by the shards' leaders.",
            st.samples_accepted.load(Relaxed),
        ),
        (
            "tidemark_cluster_samples_rejected_total",
            "Samples rejected by the shards (out of order, duplicates, ...).",
            st.samples_rejected.load(Relaxed),
        ),
        (
            "tidemark_cluster_writes_forwarded_total",
            "Shard writes forwarded to another node's leader.",
            st.forwarded.load(Relaxed),
        ),
        (
            "tidemark_cluster_writes_unavailable_total",
            "Shard writes that found no leader or quorum in time (503).",
            st.unavailable.load(Relaxed),
        ),
        (
            "tidemark_cluster_stale_reads_total",
            "Shard reads a follower answered from its replica without the leader (--cluster.read-staleness).",
            st.stale_reads.load(Relaxed),
        ),
        (
            "tidemark_cluster_queued_writes_failed_total",
            "Queued scrape writes (--cluster.write-batch-window) that no shard leader took in time.",
            st.batched_failed.load(Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let status = node.status();
    let _ = writeln!(
        out,
        "# HELP tidemark_cluster_node_up Whether this node sees a peer as live.\n# TYPE tidemark_cluster_node_up gauge"
    );
    for n in &status.nodes {
        let _ = writeln!(
            out,
            "tidemark_cluster_node_up{{node=\"{}\"}} {}",
            n.id,
            u8::from(n.live)
        );
    }
    type Gauge = fn(&tidemark_cluster::pb::ShardStatus, u64) -> f64;
    let gauges: [(&str, &str, Gauge); 5] = [
        (
            "tidemark_cluster_shard_is_leader",
            "1 when this node leads the shard.",
            |s, me| f64::from(u8::from(s.leader == me)),
        ),
        (
            "tidemark_cluster_shard_last_log_index",
            "Index of the last entry in the shard's Raft log here.",
            |s, _| s.last_log_index as f64,
        ),
        (
            "tidemark_cluster_shard_last_applied_index",
            "Index of the last entry applied to the shard's data here.",
            |s, _| s.last_applied as f64,
        ),
        (
            "tidemark_cluster_shard_term",
            "Current Raft term of the shard.",
            |s, _| s.term as f64,
        ),
        (
            "tidemark_cluster_shard_head_series",
            "Series in the head of the shard's data here.",
            |s, _| s.head_series as f64,
        ),
    ];
    for (name, help, f) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for sh in &status.shards {
            let _ = writeln!(
                out,
                "{name}{{shard=\"{}\"}} {}",
                sh.shard,
                f(sh, status.node_id)
            );
        }
    }
}
