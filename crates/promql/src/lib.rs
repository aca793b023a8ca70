//! tidemark-promql: a PromQL engine over the storage traits ([`tidemark_storage::Queryable`]),
//! so it runs unchanged on one node or a cluster, and the runner for Prometheus' promqltest
//! `.test` scripts ([`promqltest`]).
//!
//! Parsing uses the promql-parser crate; see docs/promql.md for the workarounds applied before
//! parsing and the decisions taken where Prometheus' behaviour is not specified.

mod aggregate;
mod binary;
mod engine;
mod error;
mod eval;
mod functions;
mod histogram;
mod value;

pub mod promqltest;

pub use engine::{
    Engine, EngineOptions, QueryParams, QueryResult, QuerySamples, QueryStats, QueryTimings,
};
pub use error::{ErrorKind, QueryError};
pub use value::{MatrixSeries, Value, VectorSample};

/// Parses `expr` and prints it back in Prometheus' canonical form (for `/api/v1/format_query`).
pub fn format_query(expr: &str) -> Result<String, QueryError> {
    let e = promql_parser::parser::parse(expr).map_err(QueryError::bad_data)?;
    Ok(e.to_string())
}

/// Parses a series selector (`up{job="a"}`, for `match[]` parameters) into matchers.
pub fn parse_series_selector(s: &str) -> Result<Vec<tidemark_model::Matcher>, QueryError> {
    let _ = s;
    Err(QueryError::new(ErrorKind::Internal, "not implemented yet"))
}
