//! The [`Engine`]: options, parameters, results and statistics of a query.

use std::time::Duration;

use serde::Serialize;
use tidemark_storage::Queryable;

use crate::error::{ErrorKind, QueryError};
use crate::value::Value;

/// Engine-wide settings (Prometheus' flags of the same meaning).
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for a sample (`--query.lookback-delta`, 5m).
    pub lookback_delta_ms: i64,
    /// Most samples a query may hold in memory at once (`--query.max-samples`, 50,000,000).
    pub max_samples: usize,
    /// Longest a query may run (`--query.timeout`, 2m).
    pub timeout: Duration,
    /// Most points per series in a range query's result (11,000).
    pub max_points_per_series: usize,
    /// Deepest expression nesting accepted (bounds recursion).
    pub max_depth: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_points_per_series: 11_000,
            max_depth: 200,
        }
    }
}

/// Per-query parameters (from the HTTP request).
#[derive(Default, Clone, Debug)]
pub struct QueryParams {
    pub timeout: Option<Duration>,
    pub lookback_delta_ms: Option<i64>,
    /// Most series returned (0/None: all).
    pub limit: Option<usize>,
    /// Collect [`QueryStats`].
    pub stats: bool,
}

/// Prometheus' `stats.timings` (seconds).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueryTimings {
    pub eval_total_time: f64,
    pub result_sort_time: f64,
    pub query_preparation_time: f64,
    pub inner_eval_time: f64,
    pub exec_queue_time: f64,
    pub exec_total_time: f64,
}

/// Prometheus' `stats.samples`, plus the number of series read.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuerySamples {
    pub total_queryable_samples: u64,
    pub peak_samples: u64,
    /// Series returned by the storage for all selectors (Tidemark addition).
    pub series_fetched: u64,
}

/// Query statistics in Prometheus' `stats` JSON shape.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct QueryStats {
    pub timings: QueryTimings,
    pub samples: QuerySamples,
}

/// The result of a query with its annotations.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub value: Value,
    /// `PromQL warning: ...` annotations.
    pub warnings: Vec<String>,
    /// `PromQL info: ...` annotations.
    pub infos: Vec<String>,
    pub stats: Option<QueryStats>,
}

/// The PromQL engine. Cheap to clone; holds only options.
#[derive(Clone, Debug)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Engine {
        Engine { opts }
    }

    /// The options this engine was built with.
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `expr` at `time_ms`.
    pub fn instant_query(
        &self,
        q: &dyn Queryable,
        expr: &str,
        time_ms: i64,
        p: &QueryParams,
    ) -> Result<QueryResult, QueryError> {
        let _ = (q, expr, time_ms, p);
        Err(QueryError::new(ErrorKind::Internal, "not implemented yet"))
    }

    /// Evaluates `expr` at every step from `start_ms` to `end_ms`.
    pub fn range_query(
        &self,
        q: &dyn Queryable,
        expr: &str,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        p: &QueryParams,
    ) -> Result<QueryResult, QueryError> {
        let _ = (q, expr, start_ms, end_ms, step_ms, p);
        Err(QueryError::new(ErrorKind::Internal, "not implemented yet"))
    }
}
