//! Reading downsampled data: [`ResolutionQueryable`], which the PromQL engine's planner uses to
//! read a coarser resolution when the answer stays correct (docs/downsampling.md, "Query
//! planning").
//!
//! Everything crossing this trait is plain data (resolutions, time ranges, an aggregate name),
//! so a cluster implements it by asking every shard and merging: [`merge_resolution_ranges`]
//! for [`ResolutionQueryable::resolutions`], a [`crate::MergeQuerier`] over the shards'
//! queriers for [`ResolutionQueryable::querier_resolution`] (shards hold disjoint series).

use crate::{Querier, Result};

/// Resolution of raw data (milliseconds; downsampled resolutions are the window length).
pub const RESOLUTION_RAW: i64 = 0;

/// One aggregate a downsampled window stores (docs/downsampling.md, "What a window holds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DownsampleAggregate {
    /// Number of raw samples in the window.
    Count,
    /// Sum of their values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Running total with counter resets compensated (for rate / increase).
    Counter,
    /// Raw value of the window's last sample.
    Last,
}

impl DownsampleAggregate {
    /// Every aggregate.
    pub const ALL: [DownsampleAggregate; 6] = [
        DownsampleAggregate::Count,
        DownsampleAggregate::Sum,
        DownsampleAggregate::Min,
        DownsampleAggregate::Max,
        DownsampleAggregate::Counter,
        DownsampleAggregate::Last,
    ];

    /// Lower-case name (`count`, `sum`, `min`, `max`, `counter`, `last`).
    pub fn name(self) -> &'static str {
        match self {
            DownsampleAggregate::Count => "count",
            DownsampleAggregate::Sum => "sum",
            DownsampleAggregate::Min => "min",
            DownsampleAggregate::Max => "max",
            DownsampleAggregate::Counter => "counter",
            DownsampleAggregate::Last => "last",
        }
    }

    /// The aggregate called `name`.
    pub fn from_name(name: &str) -> Option<DownsampleAggregate> {
        DownsampleAggregate::ALL
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// The data of one resolution a storage holds: which time it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResolutionRange {
    /// [`RESOLUTION_RAW`] or the window length in milliseconds (300000, 3600000).
    pub resolution: i64,
    /// Oldest time with data of this resolution (inclusive, milliseconds).
    pub min_time: i64,
    /// Newest time with data of this resolution (inclusive, milliseconds).
    pub max_time: i64,
}

/// A storage that also holds downsampled data. Reached from a [`crate::Queryable`] through
/// [`crate::Queryable::downsampled`]; raw data is read with [`crate::Queryable::querier`].
pub trait ResolutionQueryable: Send + Sync {
    /// The resolutions with data (raw included when there is any), each with the time range it
    /// covers, finest first.
    fn resolutions(&self) -> Result<Vec<ResolutionRange>>;

    /// A querier over `[mint, maxt]` (inclusive) of downsampled data of `resolution` (> 0) that
    /// returns aggregate `aggr` of every matching series under the series' own labels, one
    /// sample per window at the time of the window's last raw sample. Counter values continue
    /// across the storage's blocks (docs/downsampling.md).
    fn querier_resolution(
        &self,
        mint: i64,
        maxt: i64,
        resolution: i64,
        aggr: DownsampleAggregate,
    ) -> Result<Box<dyn Querier>>;
}

/// Merges the [`ResolutionQueryable::resolutions`] of several storages (the shards of a
/// cluster): per resolution, the union of the time ranges; finest first.
pub fn merge_resolution_ranges(
    parts: impl IntoIterator<Item = Vec<ResolutionRange>>,
) -> Vec<ResolutionRange> {
    let mut out: Vec<ResolutionRange> = Vec::new();
    for r in parts.into_iter().flatten() {
        match out.iter_mut().find(|o| o.resolution == r.resolution) {
            Some(o) => {
                o.min_time = o.min_time.min(r.min_time);
                o.max_time = o.max_time.max(r.max_time);
            }
            None => out.push(r),
        }
    }
    out.sort_by_key(|r| r.resolution);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_names_round_trip() {
        for a in DownsampleAggregate::ALL {
            assert_eq!(DownsampleAggregate::from_name(a.name()), Some(a));
        }
        assert_eq!(DownsampleAggregate::from_name("avg"), None);
    }

    #[test]
    fn merge_is_a_union_per_resolution() {
        let r = |resolution, min_time, max_time| ResolutionRange {
            resolution,
            min_time,
            max_time,
        };
        let merged = merge_resolution_ranges([
            vec![r(3_600_000, 10, 20), r(0, 50, 60)],
            vec![r(0, 40, 55), r(300_000, 15, 45)],
            vec![],
        ]);
        assert_eq!(
            merged,
            vec![r(0, 40, 60), r(300_000, 15, 45), r(3_600_000, 10, 20)]
        );
    }
}
