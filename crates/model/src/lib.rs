//! Tidemark's data model: [`Labels`], [`Sample`], [`Matcher`], the stable series hash and time
//! helpers. Nothing here does I/O; every other crate builds on these types.

mod labels;
mod matcher;
mod sample;
pub mod time;

pub use labels::{Label, Labels, LabelsBuilder, METRIC_NAME};
pub use matcher::{MatchType, Matcher, MatcherError};
pub use sample::{STALE_NAN_BITS, Sample, is_stale_nan, stale_nan};
mod metadata;
pub use labels::{LabelsError, LabelsIter};
pub use metadata::{Exemplar, Metadata, MetricType};
