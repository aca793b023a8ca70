//! The storage contract every Tidemark layer shares (modelled on Prometheus'
//! `storage/interface.go`): [`Appendable`]/[`Appender`] to write, [`Queryable`]/[`Querier`] to
//! read sorted [`SeriesSet`]s, sample iterators, and the merge of sorted series sets.
//!
//! The engine (tidemark-tsdb) and the cluster implement these traits; PromQL, scraping, rules and
//! the HTTP API use only them, so they run unchanged on one node or many.
//!
//! The traits are synchronous: the engine appends and reads in microseconds, and async callers
//! (the HTTP server, the cluster's Raft path) run them on blocking threads.

mod error;
mod iter;
pub mod memory;
mod merge;
mod resolution;

use tidemark_model::{Exemplar, Labels, Matcher, Metadata};

pub use error::{Error, Result};
pub use iter::{ListSeries, SampleIter, Series, SeriesSet, VecSampleIter, series_set_from_vec};
pub use merge::{MergeQuerier, merge_series_sets};
pub use resolution::{
    DownsampleAggregate, RESOLUTION_RAW, ResolutionQueryable, ResolutionRange,
    merge_resolution_ranges,
};

/// A reference to a series inside one storage, returned by [`Appender::append`] so that later
/// appends can skip the label lookup. Only meaningful to the storage that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesRef(pub u64);

/// Something that can be written to.
pub trait Appendable: Send + Sync {
    /// A new appender; its samples become visible together on [`Appender::commit`].
    fn appender(&self) -> Box<dyn Appender>;

    /// An appender for writes that no client waits on (scrapes, rule results): its `commit`
    /// makes the batch visible and may return before it is durable; the storage makes it
    /// durable soon after (a single node: within about a second). Default: [`Self::appender`].
    fn background_appender(&self) -> Box<dyn Appender> {
        self.appender()
    }

    /// An appender for periodic bulk writes that nothing reads right after (scrapes): like
    /// [`Self::background_appender`], but `commit` may return before the batch is visible:
    /// the storage may hold it briefly to write it together with other commits (a cluster:
    /// one Raft entry per shard for the scrapes of a fraction of a second), and reports a
    /// failure to write it in its own logs and metrics. Per-sample errors found at `append`
    /// are still returned. Default: [`Self::background_appender`].
    fn batching_appender(&self) -> Box<dyn Appender> {
        self.background_appender()
    }
}

/// A batch of writes. Nothing is visible (or durable) before `commit` returns `Ok`.
pub trait Appender: Send {
    /// Adds a sample. `series` is a reference from an earlier append to the same storage (a
    /// hint; a stale one is ignored and the labels are used). Per-sample errors (out of order,
    /// duplicate timestamp, out of bounds) reject that sample only; the batch stays usable.
    fn append(
        &mut self,
        series: Option<SeriesRef>,
        labels: &Labels,
        t: i64,
        v: f64,
    ) -> Result<SeriesRef>;

    /// Attaches an exemplar to a series. Storages without exemplar support ignore it.
    fn append_exemplar(
        &mut self,
        _series: SeriesRef,
        _labels: &Labels,
        _e: &Exemplar,
    ) -> Result<()> {
        Ok(())
    }

    /// Records metric metadata for the series' metric family. Optional.
    fn update_metadata(
        &mut self,
        _series: SeriesRef,
        _labels: &Labels,
        _m: &Metadata,
    ) -> Result<()> {
        Ok(())
    }

    /// Makes the batch durable (per the storage's sync policy) and visible.
    fn commit(&mut self) -> Result<()>;

    /// Discards the batch.
    fn rollback(&mut self) -> Result<()>;
}

/// Something that can be read from.
pub trait Queryable: Send + Sync {
    /// A querier over `[mint, maxt]` (milliseconds, both inclusive).
    fn querier(&self, mint: i64, maxt: i64) -> Result<Box<dyn Querier>>;

    /// The same storage's downsampled data, when it has any (the PromQL planner reads it for
    /// long ranges; docs/downsampling.md). `None` (the default): raw data only.
    fn downsampled(&self) -> Option<&dyn ResolutionQueryable> {
        None
    }
}

/// Hints a querier may use to read less (e.g. a coarser resolution); it may ignore them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectHints {
    /// Start and end of the data needed, milliseconds.
    pub start: i64,
    pub end: i64,
    /// Query step in milliseconds (0 for instant queries).
    pub step: i64,
    /// The function the selector feeds (`rate`, `max_over_time`, ...), if any.
    pub func: Option<String>,
    /// Range of a range selector in milliseconds (0 for instant selectors).
    pub range: i64,
    /// Grouping labels of the enclosing aggregation, and whether it is `by` (else `without`).
    pub grouping: Vec<String>,
    pub by: bool,
    /// Stop after this many series (0: no limit).
    pub limit: usize,
}

/// Reads series from a fixed time range.
pub trait Querier: Send + Sync {
    /// Series matching all `matchers`, with samples inside the querier's range. When `sorted`
    /// is true the set is in [`Labels`] order (merging needs that).
    fn select(&self, sorted: bool, hints: Option<&SelectHints>, matchers: &[Matcher]) -> SeriesSet;

    /// Sorted unique values of label `name` among series matching `matchers` (all series when
    /// empty). `limit` 0 means no limit.
    fn label_values(&self, name: &str, matchers: &[Matcher], limit: usize) -> Result<Vec<String>>;

    /// Sorted unique label names among series matching `matchers` (all series when empty).
    fn label_names(&self, matchers: &[Matcher], limit: usize) -> Result<Vec<String>>;
}
