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
use crate::node::{Node, ReadSource, Shard, ShardSeries, applied_at_least, shard_of};
use crate::read_index::Ask;
use tidemark_tsdb::Db;

/// Runs blocking `f` on this thread; on a runtime worker (a caller that should have used
/// spawn_blocking) the runtime first hands the worker's other tasks to another thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// How long a follower waits for a leader's read index before reading on the leader.
const READ_INDEX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

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

    /// Runs `fut` on the node's runtime and waits for it from this (non-async) thread.
    fn wait<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = T> + Send + 'static,
    ) -> tidemark_storage::Result<T> {
        use tokio::runtime::RuntimeFlavor;
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            // A plain thread (a blocking-pool thread, a rayon worker, a test's thread): poll
            // the future here, woken directly by the runtime's I/O and timers — no hand-off to
            // a runtime worker and back.
            Err(_) => return Ok(self.rt.block_on(fut)),
            // A runtime worker (a caller that should have used spawn_blocking): hand its other
            // tasks to another thread first, then the same.
            Ok(RuntimeFlavor::MultiThread) => {
                return Ok(tokio::task::block_in_place(|| self.rt.block_on(fut)));
            }
            Ok(_) => {}
        }
        // Inside a current-thread runtime: only a spawned task can make progress.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| {
            tidemark_storage::Error::Unavailable("the cluster node is shutting down".into())
        })
    }
}

impl ClusterStorage {
    /// This node's replicas that may serve a read seeing every write acknowledged before this
    /// call, by shard: the shards it leads (under its lease at once, else after a read-index
    /// round), and the shards it follows once they have applied their leader's read index.
    /// The read indexes are asked of every leader node at once (one request each, covering
    /// all its shards; `read_index.rs`), from this thread, while the lease of the shards led
    /// here is checked. A shard missing from the answer is read on its leader instead.
    fn readable_replicas(&self) -> tidemark_storage::Result<HashMap<u32, Db>> {
        let node = &self.node;
        let (led, mut followed) = node.read_plan();
        let mut out = HashMap::new();
        // Followers that may answer from their replica without the leader (bounded staleness,
        // off by default).
        for shards in followed.values_mut() {
            shards.retain(|sh| match node.stale_db(sh) {
                Some(db) => {
                    out.insert(sh.id, db);
                    false
                }
                None => true,
            });
        }
        followed.retain(|_, shards| !shards.is_empty());
        let asks: Vec<Ask> = followed
            .iter()
            .map(|(&l, shards)| Ask {
                node: l,
                addr: node.addr_of(l),
                shards: shards.iter().map(|sh| sh.id).collect(),
            })
            .collect();
        let replies = blocking(|| node.read_clients().ask(&asks, READ_INDEX_TIMEOUT));
        // Replicas that must wait (to apply the read index, or to confirm leadership).
        let mut behind: Vec<(Shard, u64)> = Vec::new();
        let mut unleased: Vec<Shard> = Vec::new();
        for sh in led {
            match node.leased_db(&sh) {
                Some(db) => {
                    out.insert(sh.id, db);
                }
                None => unleased.push(sh),
            }
        }
        for ((_, shards), rep) in followed.into_iter().zip(replies) {
            let Some(rep) = rep else { continue };
            for (sh, ri) in shards.into_iter().zip(rep.shards) {
                if ri.shard != sh.id {
                    continue;
                }
                let Ok(index) = u64::try_from(ri.index) else {
                    if ri.leader != 0 {
                        node.set_hint(sh.id, Some(ri.leader));
                    }
                    continue;
                };
                if applied_at_least(&sh, index) {
                    if let Some(db) = sh.data.db() {
                        out.insert(sh.id, db);
                    }
                } else {
                    behind.push((sh, index));
                }
            }
        }
        if behind.is_empty() && unleased.is_empty() {
            return Ok(out);
        }
        let node = node.clone();
        let more = self.wait(async move {
            let led = futures::future::join_all(
                unleased
                    .iter()
                    .map(|sh| async { node.leader_db(sh).await.map(|db| (sh.id, db)) }),
            );
            let followed = futures::future::join_all(
                behind
                    .iter()
                    .map(|(sh, i)| async { node.follower_db(sh, *i).await.map(|db| (sh.id, db)) }),
            );
            let (a, b) = futures::future::join(led, followed).await;
            a.into_iter().chain(b).flatten().collect::<Vec<_>>()
        })?;
        out.extend(more);
        Ok(out)
    }
}

impl Appendable for ClusterStorage {
    fn appender(&self) -> Box<dyn Appender> {
        Box::new(ClusterAppender::new(self.clone(), false))
    }

    /// Scrapes: `commit` queues the batch and returns; commits that arrive close together go
    /// to each shard as one Raft entry ([`Node::write_batched`]).
    fn batching_appender(&self) -> Box<dyn Appender> {
        Box::new(ClusterAppender::new(self.clone(), true))
    }
}

/// Buffers a commit's samples per series; `commit` routes them to the shards' leaders and
/// returns once every shard has them on a quorum.
#[derive(Debug)]
struct ClusterAppender {
    storage: ClusterStorage,
    /// Commit through the shards' write batching (scrapes).
    batching: bool,
    /// Runs of samples of one series, in append order: labels, shard, end in `samples`.
    /// Callers append a series' samples together; a series that comes back later starts a new
    /// run (a batch may list a series more than once; samples are applied in order).
    runs: Vec<(Labels, u32, usize)>,
    samples: Vec<(i64, f64)>,
    /// Metadata to replicate with the commit, latest per (metric family, target).
    metadata: HashMap<(String, Labels), (Labels, Metadata)>,
    /// Exemplars to replicate with the commit.
    exemplars: Vec<(Labels, Exemplar)>,
}

impl ClusterAppender {
    fn new(storage: ClusterStorage, batching: bool) -> ClusterAppender {
        ClusterAppender {
            storage,
            batching,
            runs: Vec::new(),
            samples: Vec::new(),
            metadata: HashMap::new(),
            exemplars: Vec::new(),
        }
    }
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
        self.samples.push((t, v));
        let end = self.samples.len();
        match self.runs.last_mut() {
            Some((l, _, e)) if l == labels => *e = end,
            _ => {
                // The shard needs the label set's hash only with more than one shard.
                let n = self.storage.node.num_shards();
                let s = if n > 1 { shard_of(labels, n) } else { 0 };
                self.runs.push((labels.clone(), s, end));
            }
        }
        // The reference is not used (the shards find series by their labels).
        Ok(SeriesRef(0))
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
        let mut from = 0;
        for (labels, s, end) in self.runs.drain(..) {
            let v = per_shard.entry(s).or_default();
            if v.last()
                .is_none_or(|b| b.num_samples() as usize * 17 > MAX_BATCH_BYTES)
            {
                v.push(BatchBuilder::new());
            }
            if let Some(b) = v.last_mut() {
                b.add(&labels, self.samples.get(from..end).unwrap_or_default());
            }
            from = end;
        }
        self.samples.clear();
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
        if self.batching {
            return self
                .storage
                .wait(async move { node.write_batched(batches).await });
        }
        let res = self
            .storage
            .wait(async move { node.write(batches).await })??;
        if let Some(e) = res.first_error {
            tracing::debug!(rejected = res.rejected, first = %e, "samples rejected by the shards");
        }
        Ok(())
    }

    fn rollback(&mut self) -> tidemark_storage::Result<()> {
        self.runs.clear();
        self.samples.clear();
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
        let (mint, maxt, source) = (self.mint, self.maxt, self.source);
        // The shards this node may read in place; the others are read on their leaders.
        let mut local = match self.storage.readable_replicas() {
            Ok(l) => l,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let n = self.storage.node.num_shards();
        let remote: Vec<u32> = (0..n).filter(|s| !local.contains_key(s)).collect();
        let mut fetched: HashMap<u32, Vec<ShardSeries>> = HashMap::new();
        if !remote.is_empty() {
            let node = self.storage.node.clone();
            let m = matchers.to_vec();
            let res = self.storage.wait(async move {
                let futs = remote.into_iter().map(|s| {
                    let (node, m) = (node.clone(), m.clone());
                    async move {
                        let r = node.select_shard(s, &m, (mint, maxt), source, false).await;
                        (s, r)
                    }
                });
                futures::future::join_all(futs).await
            });
            match res {
                Ok(r) => {
                    for (s, r) in r {
                        match r {
                            Ok(series) => {
                                fetched.insert(s, series);
                            }
                            Err(e) => return Box::new(std::iter::once(Err(e.into()))),
                        }
                    }
                }
                Err(e) => return Box::new(std::iter::once(Err(e))),
            }
        }
        let mut sets = Vec::with_capacity(n as usize);
        for s in 0..n {
            if let Some(db) = local.remove(&s) {
                // This node's replica, read in place (lazily, as on a single node).
                let q = match source {
                    None => db.querier(mint, maxt),
                    Some((r, a)) => ResolutionQueryable::querier_resolution(&db, mint, maxt, r, a),
                };
                match q {
                    Ok(q) => sets.push(q.select(true, hints, matchers)),
                    Err(e) => return Box::new(std::iter::once(Err(e))),
                }
            } else if let Some(series) = fetched.remove(&s) {
                let v: Vec<Arc<dyn Series>> = series
                    .into_iter()
                    .map(|s| Arc::new(ListSeries::new(s.labels, s.samples)) as Arc<dyn Series>)
                    .collect();
                sets.push(series_set_from_vec(v));
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
        self.labels(Some(name), matchers, limit)
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
    /// Label names (`name` empty) or the values of label `name`, over every shard.
    fn labels(
        &self,
        name: Option<&str>,
        matchers: &[Matcher],
        limit: usize,
    ) -> tidemark_storage::Result<Vec<String>> {
        let (mint, maxt) = (self.mint, self.maxt);
        let local = self.storage.readable_replicas()?;
        let mut all = std::collections::BTreeSet::new();
        // The replicas read in place, on this thread.
        for db in local.values() {
            let q = db.querier(mint, maxt)?;
            all.extend(match name {
                Some(n) => q.label_values(n, matchers, limit)?,
                None => q.label_names(matchers, limit)?,
            });
        }
        let remote: Vec<u32> = (0..self.storage.node.num_shards())
            .filter(|s| !local.contains_key(s))
            .collect();
        if !remote.is_empty() {
            let node = self.storage.node.clone();
            let m = matchers.to_vec();
            let name = name.map(str::to_string);
            let results = self.storage.wait(async move {
                let futs = remote.into_iter().map(|s| {
                    let (node, m, name) = (node.clone(), m.clone(), name.clone());
                    async move {
                        node.labels_shard(s, name.as_deref(), &m, mint, maxt, limit)
                            .await
                    }
                });
                futures::future::join_all(futs).await
            })?;
            for r in results {
                all.extend(r?);
            }
        }
        let mut v: Vec<String> = all.into_iter().collect();
        if limit > 0 {
            v.truncate(limit);
        }
        Ok(v)
    }
}
