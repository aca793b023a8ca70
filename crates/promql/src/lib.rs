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
mod planner;
mod value;

pub mod promqltest;

pub use engine::{
    Engine, EngineOptions, QueryParams, QueryResult, QuerySamples, QueryStats, QueryTimings,
};
pub use error::{ErrorKind, QueryError};
pub use planner::MaxSourceResolution;
pub use value::{MatrixSeries, Value, VectorSample};

/// Parses `expr` and prints it back in Prometheus' canonical form (for `/api/v1/format_query`).
pub fn format_query(expr: &str) -> Result<String, QueryError> {
    let e = engine::parse_expr(expr, EngineOptions::default().max_depth)?;
    Ok(e.prettify())
}

/// Parses a series selector (`up{job="a"}`, for `match[]` parameters) into matchers.
pub fn parse_series_selector(s: &str) -> Result<Vec<tidemark_model::Matcher>, QueryError> {
    use promql_parser::parser::Expr;
    let e = engine::parse_expr(s, EngineOptions::default().max_depth)?;
    let Expr::VectorSelector(vs) = e else {
        return Err(QueryError::bad_data(format!(
            "parse error: {s:?} is not a series selector"
        )));
    };
    if vs.offset.is_some() || vs.at.is_some() {
        return Err(QueryError::bad_data(format!(
            "parse error: series selector {s:?} must not have an offset or @ modifier"
        )));
    }
    let mut sets = eval::convert_matchers(&vs.name, &vs.matchers)?;
    if sets.len() != 1 {
        return Err(QueryError::bad_data(format!(
            "parse error: series selector {s:?} must not use \"or\" between matchers"
        )));
    }
    Ok(sets.pop().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_selector() {
        let m = parse_series_selector(r#"up{job=~"a|b", instance!="x"}"#).unwrap();
        let names: Vec<_> = m.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            vec![r#"__name__="up""#, r#"job=~"a|b""#, r#"instance!="x""#]
        );
        assert_eq!(
            parse_series_selector("sum(up)").unwrap_err().kind,
            ErrorKind::BadData
        );
        assert!(parse_series_selector("up offset 5m").is_err());
        assert!(parse_series_selector("{").is_err());
    }

    #[test]
    fn format() {
        assert_eq!(
            format_query("sum by(job)(rate(x[5m]))").unwrap(),
            "sum by (job) (rate(x[5m]))"
        );
        assert_eq!(format_query("1 +").unwrap_err().kind, ErrorKind::BadData);
    }
}
