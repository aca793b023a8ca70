//! The [`Engine`]: options, parameters, results and statistics of a query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use promql_parser::parser::{Expr, value::ValueType};
use tidemark_model::Labels;

use serde::Serialize;
use tidemark_storage::Queryable;

use crate::error::QueryError;
use crate::eval::{Annotations, Ctx, Series, Span, Val};
use crate::planner::MaxSourceResolution;
use crate::value::{MatrixSeries, Value, VectorSample};

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
    /// Step of subqueries without an explicit step (Prometheus' evaluation interval, 1m).
    pub default_subquery_step_ms: i64,
    /// The coarsest downsampled data queries read unless a query says otherwise
    /// (`--query.max-source-resolution`, default auto; docs/downsampling.md).
    pub max_source_resolution: MaxSourceResolution,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            lookback_delta_ms: 5 * 60 * 1000,
            max_samples: 50_000_000,
            timeout: Duration::from_secs(120),
            max_points_per_series: 11_000,
            max_depth: 1000,
            default_subquery_step_ms: 60_000,
            max_source_resolution: MaxSourceResolution::Auto,
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
    /// Overrides [`EngineOptions::max_source_resolution`] (`max_source_resolution=`).
    pub max_source_resolution: Option<MaxSourceResolution>,
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

static POOL: OnceLock<Option<rayon::ThreadPool>> = OnceLock::new();

/// The engine's persistent worker pool: big stacks for recursive evaluation, one thread per core.
fn pool() -> Option<&'static rayon::ThreadPool> {
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .stack_size(64 << 20)
            .thread_name(|i| format!("promql-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Deepest bracket nesting of a query text (checked before parsing: the parser recurses).
fn max_nesting(expr: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' && q != '`' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => {
                depth += 1;
                max = max.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

pub(crate) fn parse_expr(expr: &str, max_depth: usize) -> Result<Expr, QueryError> {
    if max_nesting(expr) > max_depth {
        return Err(QueryError::bad_data(format!(
            "parse error: expression nesting too deep: more than {max_depth} levels"
        )));
    }
    let parsed = match pool() {
        Some(p) => p.install(|| promql_parser::parser::parse(expr)),
        None => promql_parser::parser::parse(expr),
    };
    parsed.map_err(|e| QueryError::bad_data(format!("parse error: {e}")))
}

impl Engine {
    #[allow(clippy::too_many_arguments)]
    fn exec(
        &self,
        q: &dyn Queryable,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
        instant: bool,
        p: &QueryParams,
    ) -> Result<QueryResult, QueryError> {
        // Parse, evaluate and drop the tree on the pool's big-stack threads: all three recurse.
        match pool() {
            Some(pl) => pl.install(|| self.exec_inner(q, expr, start, end, step, instant, p)),
            None => self.exec_inner(q, expr, start, end, step, instant, p),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn exec_inner(
        &self,
        q: &dyn Queryable,
        expr: &str,
        start: i64,
        end: i64,
        step: i64,
        instant: bool,
        p: &QueryParams,
    ) -> Result<QueryResult, QueryError> {
        let t0 = Instant::now();
        let ast = parse_expr(expr, self.opts.max_depth)?;
        if expr_depth(&ast) > self.opts.max_depth {
            return Err(QueryError::bad_data(format!(
                "expression nesting too deep: more than {} levels",
                self.opts.max_depth
            )));
        }
        if !instant && matches!(ast.value_type(), ValueType::Matrix | ValueType::String) {
            let t = if ast.value_type() == ValueType::Matrix {
                "range vector"
            } else {
                "string"
            };
            return Err(QueryError::bad_data(format!(
                "invalid expression type {t:?} for range query, must be Scalar or instant Vector"
            )));
        }
        let timeout = p.timeout.unwrap_or(self.opts.timeout);
        let ctx = Ctx {
            queryable: q,
            query: expr,
            lookback: p
                .lookback_delta_ms
                .filter(|l| *l > 0)
                .unwrap_or(self.opts.lookback_delta_ms),
            query_start: start,
            query_end: end,
            query_step: if instant { 0 } else { step },
            max_samples: self.opts.max_samples,
            deadline: t0 + timeout,
            timeout,
            max_depth: self.opts.max_depth * 2 + 16,
            default_subquery_step: self.opts.default_subquery_step_ms,
            cur_samples: AtomicUsize::new(0),
            peak_samples: AtomicUsize::new(0),
            total_samples: AtomicU64::new(0),
            series_fetched: AtomicU64::new(0),
            annotations: Mutex::new(Annotations::default()),
            timed_out: AtomicBool::new(false),
            downsampled: q.downsampled(),
            max_source_resolution: p
                .max_source_resolution
                .unwrap_or(self.opts.max_source_resolution),
            resolutions: OnceLock::new(),
        };
        let span = Span {
            start,
            end,
            step: if instant { 1 } else { step },
        };
        let t1 = Instant::now();
        let val = match pool() {
            Some(pl) => pl.install(|| ctx.eval(&ast, span, 0)),
            None => ctx.eval(&ast, span, 0),
        }?;
        let t2 = Instant::now();
        let mut warnings = Vec::new();
        let mut value = finish(val, span, instant, start)?;
        if let Some(limit) = p.limit.filter(|l| *l > 0) {
            let truncated = match &mut value {
                Value::Vector(v) if v.len() > limit => {
                    v.truncate(limit);
                    true
                }
                Value::Matrix(m) if m.len() > limit => {
                    m.truncate(limit);
                    true
                }
                _ => false,
            };
            if truncated {
                warnings.push("results truncated due to limit".to_string());
            }
        }
        let t3 = Instant::now();
        let ann = ctx.annotations.into_inner().unwrap_or_default();
        warnings.extend(ann.warnings);
        let stats = p.stats.then(|| QueryStats {
            timings: QueryTimings {
                eval_total_time: (t3 - t1).as_secs_f64(),
                result_sort_time: (t3 - t2).as_secs_f64(),
                query_preparation_time: (t1 - t0).as_secs_f64(),
                inner_eval_time: (t2 - t1).as_secs_f64(),
                exec_queue_time: 0.0,
                exec_total_time: (t3 - t0).as_secs_f64(),
            },
            samples: QuerySamples {
                total_queryable_samples: ctx.total_samples.load(Ordering::Relaxed),
                peak_samples: ctx.peak_samples.load(Ordering::Relaxed) as u64,
                series_fetched: ctx.series_fetched.load(Ordering::Relaxed),
            },
        });
        Ok(QueryResult {
            value,
            warnings,
            infos: ann.infos.into_iter().collect(),
            stats,
        })
    }

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
        self.exec(q, expr, time_ms, time_ms, 0, true, p)
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
        if step_ms <= 0 {
            return Err(QueryError::bad_data(
                "zero or negative query resolution step widths are not accepted. Try a positive integer",
            ));
        }
        if end_ms < start_ms {
            return Err(QueryError::bad_data(
                "end timestamp must not be before start time",
            ));
        }
        if (end_ms - start_ms) / step_ms > self.opts.max_points_per_series as i64 {
            return Err(QueryError::bad_data(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                group_thousands(self.opts.max_points_per_series)
            )));
        }
        self.exec(q, expr, start_ms, end_ms, step_ms, false, p)
    }
}

/// Depth of an expression tree.
fn expr_depth(e: &Expr) -> usize {
    1 + match e {
        Expr::Aggregate(a) => expr_depth(&a.expr).max(a.param.as_deref().map_or(0, expr_depth)),
        Expr::Unary(u) => expr_depth(&u.expr),
        Expr::Binary(b) => expr_depth(&b.lhs).max(expr_depth(&b.rhs)),
        Expr::Paren(p) => expr_depth(&p.expr),
        Expr::Subquery(s) => expr_depth(&s.expr),
        Expr::Call(c) => c.args.args.iter().map(|a| expr_depth(a)).max().unwrap_or(0),
        _ => 0,
    }
}

fn group_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Drops names marked for removal and merges series that end up with equal labels when their
/// points do not overlap (Prometheus' delayed name removal).
fn cleanup(series: Vec<Series>) -> Result<Vec<Series>, QueryError> {
    let dup = || QueryError::execution("vector cannot contain metrics with the same labelset");
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<Series> = Vec::with_capacity(series.len());
    for mut s in series {
        if s.drop_name {
            s.labels = s.labels.without_metric_name();
            s.drop_name = false;
        }
        match index.get(&s.labels) {
            Some(&i) => {
                let t = &mut out[i];
                let mut merged = Vec::with_capacity(t.points.len() + s.points.len());
                let (mut a, mut b) = (0, 0);
                while a < t.points.len() || b < s.points.len() {
                    match (t.points.get(a), s.points.get(b)) {
                        (Some(x), Some(y)) if x.t == y.t => return Err(dup()),
                        (Some(x), Some(y)) if x.t < y.t => {
                            merged.push(*x);
                            a += 1;
                        }
                        (Some(_), Some(y)) => {
                            merged.push(*y);
                            b += 1;
                        }
                        (Some(x), None) => {
                            merged.push(*x);
                            a += 1;
                        }
                        (None, Some(y)) => {
                            merged.push(*y);
                            b += 1;
                        }
                        (None, None) => break,
                    }
                }
                t.points = merged;
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    Ok(out)
}

fn finish(val: Val, span: Span, instant: bool, t: i64) -> Result<Value, QueryError> {
    Ok(match val {
        Val::Scalar(v) => {
            if instant {
                Value::Scalar {
                    t,
                    v: v.first().copied().unwrap_or(f64::NAN),
                }
            } else {
                let samples = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| tidemark_model::Sample::new(span.t(i), *x))
                    .collect();
                Value::Matrix(vec![MatrixSeries {
                    labels: Labels::empty(),
                    samples,
                }])
            }
        }
        Val::Str(s) => Value::String { t, v: s },
        Val::Vector(series) => {
            let series = cleanup(series)?;
            if instant {
                Value::Vector(
                    series
                        .into_iter()
                        .filter_map(|s| {
                            s.points.first().map(|p| VectorSample {
                                labels: s.labels,
                                t,
                                v: p.v,
                            })
                        })
                        .collect(),
                )
            } else {
                let mut m: Vec<MatrixSeries> = series
                    .into_iter()
                    .map(|s| MatrixSeries {
                        labels: s.labels,
                        samples: s.points,
                    })
                    .collect();
                m.sort_by(|a, b| a.labels.cmp(&b.labels));
                Value::Matrix(m)
            }
        }
        Val::Matrix(series) => {
            let series = cleanup(series)?;
            let mut m: Vec<MatrixSeries> = series
                .into_iter()
                .map(|s| MatrixSeries {
                    labels: s.labels,
                    samples: s.points,
                })
                .collect();
            m.sort_by(|a, b| a.labels.cmp(&b.labels));
            Value::Matrix(m)
        }
    })
}
