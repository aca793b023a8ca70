//! The storage traits over the whole cluster: what the API, the scraper, the rules and the
//! PromQL engine use on a cluster node, unchanged from a single node.
//!
//! The traits are synchronous (callers run on blocking threads or rayon workers); each call
//! runs its async fan-out on the node's runtime and waits for it.

use std::collections::HashMap;
use std::sync::Arc;

use tidemark_model::{Exemplar, Labels, Matcher, Metadata};
use tidemark_storage::{
    Appendable, Appender, DownsampleAggregate, ListSeries, Querier, Queryable, ResolutionQueryable,
    ResolutionRange, SelectHints, Series, SeriesRef, SeriesSet, merge_resolution_ranges,
    merge_series_sets, series_set_from_vec,
};
use tokio::runtime::Handle;

use crate::batch::{BatchBuilder, Extras};
use crate::extras::target_of;
use crate::node::{Node, ReadSource, ShardRead, shard_of};

/// Largest encoded batch in one Raft entry; bigger commits are split.
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Storage over the cluster (cheap to clone).
#[derive(Debug, Clone)]
pub struct ClusterStorage {
    node: Arc<Node>,
    rt: Handle,
}

impl ClusterStorage {
    pub fn new(node: Arc<Node>, rt: Handle) -> ClusterStorage {
        ClusterStorage { node, rt }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Runs `fut` on the runtime and waits for it from this (non-async) thread.
    fn wait<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tidemark_storage::Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        // Called from a runtime worker (a caller that should have used spawn_blocking), the
        // wait would take that worker away from the very tasks it waits for: tell the runtime
        // to hand its other tasks to another thread first.
        let on_worker = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let got = if on_worker {
            tokio::task::block_in_place(|| rx.recv())
        } else {
            rx.recv()
        };
        got.map_err(|_| {
            tidemark_storage::Error::Unavailable("the cluster node is shutting down".into())
        })
    }
}

impl Appendable for ClusterStorage {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(ClusterAppender {
            storage: self.clone(),
            index: HashMap::new(),
            series: Vec::new(),
            last: None,
            metadata: HashMap::new(),
            exemplars: Vec::new(),
        })
    }
}

/// Buffers a commit's samples per series; `commit` routes them to the shards' leaders and
/// returns once every shard has them on a quorum.
#[derive(Debug)]
struct ClusterAppender {
    storage: ClusterStorage,
    /// Position in `series` by the label set's stable hash (xxh3; collisions are checked).
    index: HashMap<u64, usize>,
    series: Vec<(Labels, Vec<(i64, f64)>)>,
    /// The series of the previous append (callers append a series' samples together).
    last: Option<usize>,
    /// Metadata to replicate with the commit, latest per (metric family, target).
    metadata: HashMap<(String, Labels), (Labels, Metadata)>,
    /// Exemplars to replicate with the commit.
    exemplars: Vec<(Labels, Exemplar)>,
}

impl Appender for ClusterAppender {
    fn append(
        &mut self,
        _series: Option<SeriesRef>,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> tidemark_storage::Result<SeriesRef> {
        if labels.is_empty() {
            return Err(tidemark_storage::Error::InvalidLabels(
                "empty label set".into(),
            ));
        }
        let i = match self.last {
            Some(i) if self.series[i].0 == *labels => i,
            _ => {
                let h = labels.stable_hash();
                match self.index.get(&h) {
                    Some(&i) if self.series[i].0 == *labels => i,
                    other => {
                        self.series.push((labels.clone(), Vec::new()));
                        let i = self.series.len() - 1;
                        if other.is_none() {
                            self.index.insert(h, i);
                        }
                        i
                    }
                }
            }
        };
        self.last = Some(i);
        self.series[i].1.push((t, v));
        Ok(SeriesRef(labels.stable_hash()))
    }

    fn append_exemplar(
        &mut self,
        _series: SeriesRef,
        labels: &Labels,
        e: &Exemplar,
    ) -> tidemark_storage::Result<()> {
        if !labels.is_empty() {
            self.exemplars.push((labels.clone(), e.clone()));
        }
        Ok(())
    }

    fn update_metadata(
        &mut self,
        _series: SeriesRef,
        labels: &Labels,
        m: &Metadata,
    ) -> tidemark_storage::Result<()> {
        if let Some(name) = labels.metric_name() {
            self.metadata.insert(
                (name.to_string(), target_of(labels)),
                (labels.clone(), m.clone()),
            );
        }
        Ok(())
    }

    fn commit(&mut self) -> tidemark_storage::Result<()> {
        let n = self.storage.node.num_shards();
        let mut per_shard: HashMap<u32, Vec<BatchBuilder>> = HashMap::new();
        for (labels, samples) in self.series.drain(..) {
            let s = shard_of(&labels, n);
            let v = per_shard.entry(s).or_default();
            if v.last()
                .is_none_or(|b| b.num_samples() as usize * 17 > MAX_BATCH_BYTES)
            {
                v.push(BatchBuilder::new());
            }
            if let Some(b) = v.last_mut() {
                b.add(&labels, &samples);
            }
        }
        self.index.clear();
        self.last = None;
        // Metadata and exemplars go to their series' shard, as an entry of their own.
        let mut extras: HashMap<u32, Extras> = HashMap::new();
        for (_, (labels, m)) in self.metadata.drain() {
            extras
                .entry(shard_of(&labels, n))
                .or_default()
                .metadata
                .push((labels, m));
        }
        for (labels, e) in self.exemplars.drain(..) {
            extras
                .entry(shard_of(&labels, n))
                .or_default()
                .exemplars
                .push((labels, e));
        }
        let batches: Vec<(u32, Vec<u8>)> = per_shard
            .into_iter()
            .flat_map(|(s, bs)| bs.into_iter().map(move |b| (s, b.finish())))
            .chain(extras.into_iter().map(|(s, e)| (s, e.encode())))
            .collect();
        if batches.is_empty() {
            return Ok(());
        }
        let node = self.storage.node.clone();
        let res = self
            .storage
            .wait(async move { node.write(batches).await })??;
        if let Some(e) = res.first_error {
            tracing::debug!(rejected = res.rejected, first = %e, "samples rejected by the shards");
        }
        Ok(())
    }

    fn rollback(&mut self) -> tidemark_storage::Result<()> {
        self.series.clear();
        self.index.clear();
        self.last = None;
        self.metadata.clear();
        self.exemplars.clear();
        Ok(())
    }
}

impl ClusterStorage {
    /// Exemplars of series matching any matcher set within `[start, end]`, from every shard
    /// ([`Node::exemplars`]), grouped by series.
    pub fn exemplars(
        &self,
        sets: &[Vec<Matcher>],
        start: i64,
        end: i64,
    ) -> tidemark_storage::Result<Vec<(Labels, Vec<Exemplar>)>> {
        let node = self.node.clone();
        let sets = sets.to_vec();
        let all = self.wait(async move { node.exemplars(&sets, start, end).await })??;
        Ok(crate::extras::group_exemplars(all))
    }

    /// Metadata from every shard ([`Node::metadata`]): (metric family, target, metadata).
    pub fn metadata(&self) -> tidemark_storage::Result<Vec<(String, Labels, Metadata)>> {
        let node = self.node.clone();
        Ok(self.wait(async move { node.metadata().await })??)
    }

    /// Runs an admin command on every shard ([`Node::run_command`]), waiting for it.
    pub fn run_command(&self, cmd: crate::batch::Command) -> tidemark_storage::Result<()> {
        let node = self.node.clone();
        self.wait(async move { node.run_command(&cmd).await.map_err(Into::into) })?
    }
}

impl Queryable for ClusterStorage {
    fn querier(&self, mint: i64, maxt: i64) -> tidemark_storage::Result<Box<dyn Querier>> {
        Ok(Box::new(ClusterQuerier {
            storage: self.clone(),
            mint,
            maxt,
            source: None,
        }))
    }

    fn downsampled(&self) -> Option<&dyn ResolutionQueryable> {
        Some(self)
    }
}

/// Each shard downsamples its own blocks; the planner reads them like raw data, through the
/// same per-shard read path (in place when this replica may serve the read, else the leader
/// sends the aggregate's samples).
impl ResolutionQueryable for ClusterStorage {
    /// The union over the shards hosted here (the time ranges guide the plan; the data is
    /// then read with the usual guarantees). Shards hosted elsewhere only are not seen: with
    /// fewer replicas than nodes the planner may then use raw data where coarser data exists.
    fn resolutions(&self) -> tidemark_storage::Result<Vec<ResolutionRange>> {
        let mut parts = Vec::new();
        for sh in self.node.hosted() {
            if let Some(db) = sh.data.db() {
                parts.push(ResolutionQueryable::resolutions(&db)?);
            }
        }
        Ok(merge_resolution_ranges(parts))
    }

    fn querier_resolution(
        &self,
        mint: i64,
        maxt: i64,
        resolution: i64,
        aggr: DownsampleAggregate,
    ) -> tidemark_storage::Result<Box<dyn Querier>> {
        Ok(Box::new(ClusterQuerier {
            storage: self.clone(),
            mint,
            maxt,
            source: (resolution > 0).then_some((resolution, aggr)),
        }))
    }
}

/// Asks every shard (its leader) and merges: shards hold disjoint series.
#[derive(Debug)]
struct ClusterQuerier {
    storage: ClusterStorage,
    mint: i64,
    maxt: i64,
    /// Raw data, or one downsampled aggregate.
    source: ReadSource,
}

impl Querier for ClusterQuerier {
    fn select(
        &self,
        _sorted: bool,
        hints: Option<&SelectHints>,
        matchers: &[Matcher],
    ) -> SeriesSet {
        let node = self.storage.node.clone();
        let (mint, maxt, source) = (self.mint, self.maxt, self.source);
        let m = matchers.to_vec();
        let res = self.storage.wait(async move {
            let futs = (0..node.num_shards()).map(|s| {
                let node = node.clone();
                let m = m.clone();
                async move {
                    node.select_shard_read(s, &m, (mint, maxt), source, false)
                        .await
                }
            });
            futures::future::join_all(futs).await
        });
        let results = match res {
            Ok(r) => r,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let mut sets = Vec::with_capacity(results.len());
        for r in results {
            match r {
                // This node's replica, read in place (lazily, as on a single node).
                Ok(ShardRead::Local(db)) => {
                    let q = match source {
                        None => db.querier(mint, maxt),
                        Some((r, a)) => {
                            ResolutionQueryable::querier_resolution(&db, mint, maxt, r, a)
                        }
                    };
                    match q {
                        Ok(q) => sets.push(q.select(true, hints, matchers)),
                        Err(e) => return Box::new(std::iter::once(Err(e))),
                    }
                }
                Ok(ShardRead::Remote(series)) => {
                    let v: Vec<Arc<dyn Series>> = series
                        .into_iter()
                        .map(|s| Arc::new(ListSeries::new(s.labels, s.samples)) as Arc<dyn Series>)
                        .collect();
                    sets.push(series_set_from_vec(v));
                }
                Err(e) => return Box::new(std::iter::once(Err(e.into()))),
            }
        }
        merge_series_sets(sets)
    }

    fn label_values(
        &self,
        name: &str,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        self.labels(Some(name.to_string()), matchers, limit)
    }

    fn label_names(
        &self,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        self.labels(None, matchers, limit)
    }
}

impl ClusterQuerier {
    fn labels(
        &self,
        name: Option<String>,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let node = self.storage.node.clone();
        let (mint, maxt) = (self.mint, self.maxt);
        let matchers = matchers.to_vec();
        let results = self.storage.wait(async move {
            let futs = (0..node.num_shards()).map(|s| {
                let node = node.clone();
                let m = matchers.clone();
                let name = name.clone();
                async move {
                    node.labels_shard(s, name.as_deref(), &m, mint, maxt, limit)
                        .await
                }
            });
            futures::future::join_all(futs).await
        })?;
        let mut all = std::collections::BTreeSet::new();
        for r in results {
            all.extend(r?);
        }
        let mut v: Vec<String> = all.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }
}
