//! The evaluator: walks the parsed expression over a span of steps.
//!
//! Every node evaluates over the whole span at once (Prometheus' range evaluation): an instant
//! vector is a set of [`Series`] whose points sit on step timestamps, a scalar is one value per
//! step. Operators and aggregations then work step by step over those series.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matchers};
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};
use rayon::prelude::*;
use tidemark_model::{Labels, MatchType, Matcher, Sample, is_stale_nan};
use tidemark_storage::{
    DownsampleAggregate, ListSeries, Queryable, RESOLUTION_RAW, ResolutionQueryable,
    ResolutionRange, SelectHints,
};

use crate::error::{ErrorKind, QueryError};
use crate::planner::{self, MaxSourceResolution, Part, Segment};

pub(crate) type Result<T, E = QueryError> = std::result::Result<T, E>;

/// The steps a node is evaluated at: `start, start+step, ..., <= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) step: i64,
}

impl Span {
    pub(crate) fn len(&self) -> usize {
        if self.end < self.start {
            return 0;
        }
        ((self.end - self.start) / self.step + 1) as usize
    }

    #[inline]
    pub(crate) fn t(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    #[inline]
    pub(crate) fn index(&self, t: i64) -> usize {
        ((t - self.start) / self.step) as usize
    }
}

/// One series of an instant vector evaluated over a span (points on step timestamps), or of a
/// range vector (raw sample timestamps).
#[derive(Debug, Clone)]
pub(crate) struct Series {
    pub(crate) labels: Labels,
    pub(crate) points: Vec<Sample>,
    /// The metric name is to be removed at the end (Prometheus' delayed name removal).
    pub(crate) drop_name: bool,
}

/// A node's value over a span.
#[derive(Debug)]
pub(crate) enum Val {
    /// One value per step.
    Scalar(Vec<f64>),
    Str(String),
    Vector(Vec<Series>),
    /// A range vector: only as the result of an instant query.
    Matrix(Vec<Series>),
}

impl Val {
    fn type_name(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Matrix(_) => "range vector",
        }
    }
}

/// Annotations collected while evaluating.
#[derive(Debug, Default)]
pub(crate) struct Annotations {
    pub(crate) warnings: BTreeSet<String>,
    pub(crate) infos: BTreeSet<String>,
}

/// Everything a query's evaluation shares.
pub(crate) struct Ctx<'a> {
    pub(crate) queryable: &'a dyn Queryable,
    pub(crate) query: &'a str,
    pub(crate) lookback: i64,
    pub(crate) query_start: i64,
    pub(crate) query_end: i64,
    pub(crate) query_step: i64,
    pub(crate) max_samples: usize,
    pub(crate) deadline: Instant,
    pub(crate) timeout: Duration,
    pub(crate) max_depth: usize,
    pub(crate) default_subquery_step: i64,
    pub(crate) cur_samples: AtomicUsize,
    pub(crate) peak_samples: AtomicUsize,
    pub(crate) total_samples: AtomicU64,
    pub(crate) series_fetched: AtomicU64,
    pub(crate) annotations: Mutex<Annotations>,
    pub(crate) timed_out: AtomicBool,
    /// Downsampled data of the same storage, when it has any and the query may read it.
    pub(crate) downsampled: Option<&'a dyn ResolutionQueryable>,
    pub(crate) max_source_resolution: MaxSourceResolution,
    /// The storage's resolutions, asked once per query (on the first planned selector).
    pub(crate) resolutions: OnceLock<Vec<ResolutionRange>>,
}

/// How a selector reads downsampled data: time segments of resolutions and the aggregate the
/// selector's function needs (see [`crate::planner`]).
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) segments: Vec<Segment>,
    pub(crate) aggr: DownsampleAggregate,
}

impl Plan {
    /// The coarsest resolution read.
    pub(crate) fn coarsest(&self) -> i64 {
        self.segments
            .iter()
            .map(|s| s.resolution)
            .max()
            .unwrap_or(RESOLUTION_RAW)
    }

    /// End of the last downsampled segment.
    pub(crate) fn coarse_until(&self) -> i64 {
        self.segments
            .iter()
            .filter(|s| s.resolution > RESOLUTION_RAW)
            .map(|s| s.to)
            .max()
            .unwrap_or(i64::MIN)
    }
}

impl std::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

pub(crate) fn timeout_error(timeout: Duration) -> QueryError {
    let _ = timeout;
    QueryError::new(
        ErrorKind::Timeout,
        "query timed out in expression evaluation",
    )
}

pub(crate) fn too_many_samples() -> QueryError {
    QueryError::execution(
        "query processing would load too many samples into memory in query execution",
    )
}

/// Milliseconds of a `Duration` as i64.
pub(crate) fn dur_ms(d: &Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => dur_ms(d),
        Some(Offset::Neg(d)) => -dur_ms(d),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => dur_ms(&d),
        Err(e) => -dur_ms(&e.duration()),
    }
}

/// Converts the parser's matchers into ours; `or` alternatives become separate sets.
pub(crate) fn convert_matchers(name: &Option<String>, ms: &Matchers) -> Result<Vec<Vec<Matcher>>> {
    let conv = |list: &[promql_parser::label::Matcher]| -> Result<Vec<Matcher>> {
        let mut out = Vec::with_capacity(list.len() + 1);
        if let Some(n) = name
            && !list
                .iter()
                .any(|m| m.name == tidemark_model::METRIC_NAME && matches!(m.op, MatchOp::Equal))
        {
            out.push(Matcher::equal(tidemark_model::METRIC_NAME, n.clone()));
        }
        for m in list {
            let kind = match m.op {
                MatchOp::Equal => MatchType::Equal,
                MatchOp::NotEqual => MatchType::NotEqual,
                MatchOp::Re(_) => MatchType::Regex,
                MatchOp::NotRe(_) => MatchType::NotRegex,
            };
            out.push(
                Matcher::new(kind, m.name.clone(), m.value.clone())
                    .map_err(|e| QueryError::bad_data(e.to_string()))?,
            );
        }
        Ok(out)
    };
    if ms.or_matchers.is_empty() {
        Ok(vec![conv(&ms.matchers)?])
    } else {
        ms.or_matchers.iter().map(|l| conv(l)).collect()
    }
}

/// A series read from storage: labels and its samples in the needed range.
struct RawSeries {
    labels: Labels,
    samples: Vec<Sample>,
}

impl Ctx<'_> {
    pub(crate) fn check_deadline(&self) -> Result<()> {
        if self.timed_out.load(Ordering::Relaxed) || Instant::now() > self.deadline {
            self.timed_out.store(true, Ordering::Relaxed);
            return Err(timeout_error(self.timeout));
        }
        Ok(())
    }

    pub(crate) fn add_samples(&self, n: usize) -> Result<()> {
        let cur = self.cur_samples.fetch_add(n, Ordering::Relaxed) + n;
        self.peak_samples.fetch_max(cur, Ordering::Relaxed);
        if cur > self.max_samples {
            return Err(too_many_samples());
        }
        Ok(())
    }

    pub(crate) fn release_samples(&self, n: usize) {
        let _ = self
            .cur_samples
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
    }

    pub(crate) fn warn(&self, msg: String) {
        if let Ok(mut a) = self.annotations.lock() {
            a.warnings.insert(msg);
        }
    }

    pub(crate) fn info(&self, msg: String) {
        if let Ok(mut a) = self.annotations.lock() {
            a.infos.insert(msg);
        }
    }

    /// Position `(line:col)` of `needle` in the query text, best effort (the parser keeps none).
    pub(crate) fn pos_of(&self, needle: &str, after: &str) -> String {
        let from = if after.is_empty() {
            0
        } else {
            self.query.find(after).map_or(0, |i| i + after.len())
        };
        let idx = self
            .query
            .get(from..)
            .and_then(|s| s.find(needle))
            .map_or(0, |i| i + from);
        let line = self.query[..idx].matches('\n').count() + 1;
        let col = idx - self.query[..idx].rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("({line}:{col})")
    }

    fn resolve_at(&self, at: &Option<AtModifier>) -> Option<i64> {
        match at {
            None => None,
            Some(AtModifier::Start) => Some(self.query_start),
            Some(AtModifier::End) => Some(self.query_end),
            Some(AtModifier::At(t)) => Some(system_time_ms(t)),
        }
    }

    /// Reads every series matching `vs` with samples in `[mint, maxt]`, sorted by labels.
    #[allow(clippy::too_many_arguments)]
    fn select_handles(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        span: Span,
        range: i64,
        func: Option<&str>,
        plan: Option<(&Plan, DownsampleAggregate)>,
    ) -> Result<(Vec<std::sync::Arc<dyn tidemark_storage::Series>>, usize)> {
        self.check_deadline()?;
        let sets = convert_matchers(&vs.name, &vs.matchers)?;
        let hints = SelectHints {
            start: mint,
            end: maxt,
            step: span.step,
            func: func.map(str::to_string),
            range,
            ..SelectHints::default()
        };
        if let Some((plan, aggr)) = plan {
            return self.select_planned(vs, &sets, plan, aggr, &hints);
        }
        let querier = self.queryable.querier(mint, maxt)?;
        let mut handles: Vec<std::sync::Arc<dyn tidemark_storage::Series>> = Vec::new();
        for matchers in &sets {
            for s in querier.select(true, Some(&hints), matchers) {
                handles.push(s?);
                if handles.len().is_multiple_of(4096) {
                    self.check_deadline()?;
                }
            }
        }
        Ok((handles, sets.len()))
    }

    #[allow(clippy::too_many_arguments)]
    fn select(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        span: Span,
        range: i64,
        func: Option<&str>,
        plan: Option<(&Plan, DownsampleAggregate)>,
    ) -> Result<Vec<RawSeries>> {
        let (handles, nsets) = self.select_handles(vs, mint, maxt, span, range, func, plan)?;
        // Read the samples in parallel; the first series' length sizes the other buffers.
        let read =
            |s: &std::sync::Arc<dyn tidemark_storage::Series>, cap: usize| -> Result<RawSeries> {
                Ok(RawSeries {
                    labels: s.labels().clone(),
                    samples: samples_in(s.as_ref(), mint, maxt, cap)?,
                })
            };
        let mut all: Vec<RawSeries> = Vec::with_capacity(handles.len());
        if let Some(first) = handles.first() {
            let f = read(first, 0)?;
            let cap = f.samples.len() + 1;
            all.push(f);
            let rest: Vec<Result<RawSeries>> =
                handles[1..].par_iter().map(|s| read(s, cap)).collect();
            for r in rest {
                all.push(r?);
            }
        }
        drop(handles);
        let total: usize = all.iter().map(|r| r.samples.len()).sum();
        self.total_samples
            .fetch_add(total as u64, Ordering::Relaxed);
        self.series_fetched
            .fetch_add(all.len() as u64, Ordering::Relaxed);
        // Raw samples count against the limit while they are held.
        self.add_samples(total)?;
        self.check_deadline()?;
        if nsets > 1 {
            all.sort_by(|a, b| a.labels.cmp(&b.labels));
            all.dedup_by(|a, b| a.labels == b.labels);
        }
        Ok(all)
    }

    /// The plan for a selector over `[mint, maxt]` feeding `func` (None: a plain selector) at
    /// `step`, `range` (0 for plain selectors): `None` reads raw data as always (no downsampled
    /// storage, `max_source_resolution=raw`, a function only raw data answers, or a plan that
    /// would read only raw data).
    pub(crate) fn plan_selector(
        &self,
        vs: &VectorSelector,
        mint: i64,
        maxt: i64,
        step: i64,
        range: i64,
        func: Option<&str>,
    ) -> Result<Option<Plan>> {
        let Some(ds) = self.downsampled else {
            return Ok(None);
        };
        if self.max_source_resolution == MaxSourceResolution::Raw {
            return Ok(None);
        }
        let Some(aggr) = planner::function_aggregate(func) else {
            return Ok(None);
        };
        let available = match self.resolutions.get() {
            Some(r) => r,
            None => {
                let r = ds.resolutions()?;
                self.resolutions.get_or_init(|| r)
            }
        };
        if !available.iter().any(|r| r.resolution > RESOLUTION_RAW) {
            return Ok(None);
        }
        let preference = planner::choose(available, step, range, self.max_source_resolution);
        let segments = planner::plan_segments(available, &preference, mint, maxt);
        if !segments.iter().any(|s| s.resolution > RESOLUTION_RAW) {
            return Ok(None);
        }
        tracing::debug!(selector = %vs, ?segments, aggregate = aggr.name(), "planned downsampled read");
        Ok(Some(Plan { segments, aggr }))
    }

    /// Reads every series matching one of `sets` along `plan`: each segment from its
    /// resolution (raw samples converted to the aggregate's meaning), joined per series
    /// ([`planner::join`]). Returns the joined series sorted by labels (one matcher set's
    /// worth: duplicates across `or` sets are merged here).
    fn select_planned(
        &self,
        vs: &VectorSelector,
        sets: &[Vec<Matcher>],
        plan: &Plan,
        aggr: DownsampleAggregate,
        hints: &SelectHints,
    ) -> Result<(Vec<Arc<dyn tidemark_storage::Series>>, usize)> {
        let Some(ds) = self.downsampled else {
            return Err(QueryError::new(
                ErrorKind::Internal,
                "planned a downsampled read without downsampled storage",
            ));
        };
        let segs = &plan.segments;
        // Per series: its samples from each segment.
        let mut by_series: std::collections::BTreeMap<Labels, Vec<Option<Vec<Sample>>>> =
            std::collections::BTreeMap::new();
        let mut coarse_used: BTreeSet<i64> = BTreeSet::new();
        for (k, seg) in segs.iter().enumerate() {
            let before = k
                .checked_sub(1)
                .map_or(0, |p| planner::overlap(aggr, &segs[p], seg));
            let after = segs
                .get(k + 1)
                .map_or(0, |n| planner::overlap(aggr, seg, n));
            let (lo, hi) = (
                seg.from.saturating_sub(before),
                seg.to.saturating_add(after),
            );
            let raw = seg.resolution == RESOLUTION_RAW;
            let querier = if raw {
                self.queryable.querier(lo, hi)?
            } else {
                ds.querier_resolution(lo, hi, seg.resolution, aggr)?
            };
            let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
            let mut handles: Vec<Arc<dyn tidemark_storage::Series>> = Vec::new();
            for matchers in sets {
                for series in querier.select(true, Some(hints), matchers) {
                    let series = series?;
                    if seen.insert(series.labels().clone()) {
                        handles.push(series);
                    }
                }
            }
            // Decode in parallel (downsampled series decode their chunks when iterated).
            let multi = segs.len() > 1;
            let read: Vec<Result<Vec<Sample>>> = handles
                .par_iter()
                .map(|series| {
                    if Instant::now() > self.deadline {
                        return Err(timeout_error(self.timeout));
                    }
                    let mut samples = samples_in(series.as_ref(), lo, hi, 0)?;
                    if raw {
                        if aggr != DownsampleAggregate::Last {
                            samples.retain(|x| !x.v.is_nan());
                        }
                        match aggr {
                            DownsampleAggregate::Count => {
                                samples.iter_mut().for_each(|x| x.v = 1.0)
                            }
                            DownsampleAggregate::Counter if multi => {
                                planner::compensate(&mut samples)
                            }
                            _ => {}
                        }
                    }
                    Ok(samples)
                })
                .collect();
            for (series, samples) in handles.iter().zip(read) {
                let samples = samples?;
                if samples.is_empty() {
                    continue;
                }
                if !raw {
                    coarse_used.insert(seg.resolution);
                }
                let slots = by_series
                    .entry(series.labels().clone())
                    .or_insert_with(|| vec![None; segs.len()]);
                slots[k] = Some(samples);
            }
            self.check_deadline()?;
        }
        if !coarse_used.is_empty() && aggr == plan.aggr {
            let mut names: Vec<String> = segs
                .iter()
                .filter(|s| s.resolution == RESOLUTION_RAW || coarse_used.contains(&s.resolution))
                .map(|s| planner::resolution_name(s.resolution))
                .collect();
            names.dedup();
            self.info(format!(
                "PromQL info: read downsampled data for {vs}: {} (aggregate {}); max_source_resolution=raw reads raw data only",
                names.join(", "),
                aggr.name()
            ));
        }
        let out: Vec<Arc<dyn tidemark_storage::Series>> = by_series
            .into_iter()
            .filter_map(|(labels, parts)| {
                let parts: Vec<Part> = parts
                    .into_iter()
                    .zip(segs)
                    .filter_map(|(p, seg)| p.map(|samples| Part { seg: *seg, samples }))
                    .collect();
                let samples = planner::join(parts, aggr);
                (!samples.is_empty()).then(|| {
                    Arc::new(ListSeries::new(labels, samples)) as Arc<dyn tidemark_storage::Series>
                })
            })
            .collect();
        Ok((out, 1))
    }

    /// Evaluates an expression over `span`.
    pub(crate) fn eval(&self, e: &Expr, span: Span, depth: usize) -> Result<Val> {
        if depth > self.max_depth {
            return Err(QueryError::bad_data(format!(
                "expression nesting too deep: more than {} levels",
                self.max_depth
            )));
        }
        self.check_deadline()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; span.len()])),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, span, depth + 1),
            Expr::Unary(u) => match self.eval(&u.expr, span, depth + 1)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(mut ss) => {
                    for s in &mut ss {
                        for p in &mut s.points {
                            p.v = -p.v;
                        }
                        s.drop_name = true;
                    }
                    Ok(Val::Vector(ss))
                }
                other => Err(QueryError::bad_data(format!(
                    "unary expression only allowed on expressions of type scalar or instant vector, got {:?}",
                    other.type_name()
                ))),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.eval_vector_selector(vs, span)?)),
            Expr::MatrixSelector(ms) => {
                // Only reachable as the result of an instant query.
                let range = dur_ms(&ms.range);
                let src =
                    self.matrix_source(&Expr::MatrixSelector(ms.clone()), span, None, depth)?;
                let t = span.start;
                let ts = src.at.unwrap_or(t) - src.offset;
                let mut out = Vec::new();
                for s in src.series {
                    let lo = s.points.partition_point(|p| p.t <= ts - range);
                    let hi = s.points.partition_point(|p| p.t <= ts);
                    if lo < hi {
                        out.push(Series {
                            labels: s.labels,
                            points: s.points[lo..hi].to_vec(),
                            drop_name: false,
                        });
                    }
                }
                Ok(Val::Matrix(out))
            }
            Expr::Subquery(sq) => {
                let src = self.matrix_source(e, span, None, depth)?;
                let range = dur_ms(&sq.range);
                let t = span.start;
                let ts = src.at.unwrap_or(t) - src.offset;
                let mut out = Vec::new();
                for s in src.series {
                    let lo = s.points.partition_point(|p| p.t <= ts - range);
                    let hi = s.points.partition_point(|p| p.t <= ts);
                    if lo < hi {
                        out.push(Series {
                            labels: s.labels,
                            points: s.points[lo..hi].to_vec(),
                            drop_name: s.drop_name,
                        });
                    }
                }
                Ok(Val::Matrix(out))
            }
            Expr::Call(c) => crate::functions::eval_call(self, c, span, depth),
            Expr::Aggregate(a) => crate::aggregate::eval_aggregate(self, a, span, depth),
            Expr::Binary(b) => crate::binary::eval_binary(self, b, span, depth),
            Expr::Extension(_) => Err(QueryError::bad_data(
                "extension expressions are not supported",
            )),
        }
    }

    /// An instant vector selector over `span`: the latest sample within the lookback window
    /// `(t - lookback, t]` of every step, unless it is a staleness marker.
    fn eval_vector_selector(&self, vs: &VectorSelector, span: Span) -> Result<Vec<Series>> {
        self.vector_selector(vs, span, false)
    }

    /// Like an instant vector selector, but each point's value is its sample's timestamp in
    /// seconds (for `timestamp(<selector>)`).
    pub(crate) fn eval_vector_selector_ts(
        &self,
        vs: &VectorSelector,
        span: Span,
    ) -> Result<Vec<Series>> {
        self.vector_selector(vs, span, true)
    }

    fn vector_selector(
        &self,
        vs: &VectorSelector,
        span: Span,
        ts_value: bool,
    ) -> Result<Vec<Series>> {
        let offset = offset_ms(&vs.offset);
        let at = self.resolve_at(&vs.at);
        let (first, last) = match at {
            Some(a) => (a - offset, a - offset),
            None => (span.start - offset, span.end - offset),
        };
        let mut mint = first.saturating_sub(self.lookback) + 1;
        // Downsampled data: each window's last raw value, at its own time. It may be up to one
        // window older than the raw sample a step would pick: such samples get the lookback
        // plus one window of their resolution.
        let mut plan = if ts_value {
            None
        } else {
            self.plan_selector(vs, mint, last, span.step, 0, None)?
        };
        let (mut coarse_until, mut coarse_lookback) = (i64::MIN, self.lookback);
        if let Some(p) = plan.as_mut() {
            let r = p.coarsest();
            coarse_until = p.coarse_until();
            coarse_lookback = self.lookback.saturating_add(r);
            if let Some(first_seg) = p.segments.first_mut()
                && first_seg.from == mint
            {
                mint = mint.saturating_sub(r);
                first_seg.from = mint;
            }
        }
        let (handles, nsets) = self.select_handles(
            vs,
            mint,
            last,
            span,
            0,
            None,
            plan.as_ref().map(|p| (p, p.aggr)),
        )?;
        let lookback = self.lookback;
        let n = span.len();
        let read = AtomicU64::new(0);
        // Stream each series' samples through the steps: no copy of the raw samples.
        let res: Vec<Result<Option<Series>>> = handles
            .par_iter()
            .map(|h| {
                if Instant::now() > self.deadline {
                    return Err(timeout_error(self.timeout));
                }
                let mut it = h.iter();
                let mut have = it.seek(mint);
                let mut latest: Option<Sample> = None;
                let mut count = 0u64;
                let mut points = Vec::new();
                for i in 0..n {
                    let t = span.t(i);
                    let ts = at.unwrap_or(t) - offset;
                    while have {
                        let smp = it.at();
                        if smp.t > ts {
                            break;
                        }
                        latest = Some(smp);
                        count += 1;
                        have = it.next();
                    }
                    let Some(smp) = latest else { continue };
                    let lb = if smp.t <= coarse_until {
                        coarse_lookback
                    } else {
                        lookback
                    };
                    if smp.t <= ts - lb || is_stale_nan(smp.v) {
                        continue;
                    }
                    if points.capacity() == 0 {
                        points.reserve(n - i);
                    }
                    points.push(Sample::new(
                        t,
                        if ts_value {
                            smp.t as f64 / 1000.0
                        } else {
                            smp.v
                        },
                    ));
                }
                if let Some(e) = it.err() {
                    return Err(e.into());
                }
                read.fetch_add(count, Ordering::Relaxed);
                Ok((!points.is_empty()).then(|| Series {
                    labels: h.labels().clone(),
                    points,
                    drop_name: false,
                }))
            })
            .collect();
        self.total_samples
            .fetch_add(read.into_inner(), Ordering::Relaxed);
        self.series_fetched
            .fetch_add(handles.len() as u64, Ordering::Relaxed);
        drop(handles);
        let mut out = Vec::with_capacity(res.len());
        for r in res {
            if let Some(s) = r? {
                out.push(s);
            }
        }
        if nsets > 1 {
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            out.dedup_by(|a, b| a.labels == b.labels);
        }
        let total: usize = out.iter().map(|s| s.points.len()).sum();
        self.add_samples(total)?;
        Ok(out)
    }

    /// The series feeding a range function: raw samples of a matrix selector (staleness markers
    /// removed) or the points of an evaluated subquery, with the window's offset and `@` time.
    pub(crate) fn matrix_source(
        &self,
        e: &Expr,
        span: Span,
        func: Option<&str>,
        depth: usize,
    ) -> Result<MatrixSource> {
        match e {
            Expr::Paren(p) => self.matrix_source(&p.expr, span, func, depth + 1),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let range = dur_ms(&ms.range);
                let offset = offset_ms(&vs.offset);
                let at = self.resolve_at(&vs.at);
                let (first, last) = match at {
                    Some(a) => (a - offset, a - offset),
                    None => (span.start - offset, span.end - offset),
                };
                let mint = first.saturating_sub(range) + 1;
                let plan = match func {
                    Some(f) => self.plan_selector(vs, mint, last, span.step, range, Some(f))?,
                    None => None,
                };
                let raw = self.select(
                    vs,
                    mint,
                    last,
                    span,
                    range,
                    func,
                    plan.as_ref().map(|p| (p, p.aggr)),
                )?;
                // avg_over_time over windows: sums weighted by the windows' counts.
                let mut weights = None;
                if let Some(p) = &plan
                    && func == Some("avg_over_time")
                {
                    let counts = self.select(
                        vs,
                        mint,
                        last,
                        span,
                        range,
                        func,
                        Some((p, DownsampleAggregate::Count)),
                    )?;
                    let mut by_labels: HashMap<Labels, Vec<Sample>> =
                        counts.into_iter().map(|c| (c.labels, c.samples)).collect();
                    // Aligned by timestamp: a sum without a count at its time is a raw
                    // sample that arrived between the two reads (weight 1).
                    let mut w = Vec::with_capacity(raw.len());
                    for r in &raw {
                        let c = by_labels.remove(&r.labels).unwrap_or_default();
                        let mut j = 0;
                        let mut ws = Vec::with_capacity(r.samples.len());
                        for x in &r.samples {
                            while j < c.len() && c[j].t < x.t {
                                j += 1;
                            }
                            ws.push(match c.get(j) {
                                Some(cs) if cs.t == x.t => cs.v,
                                _ => 1.0,
                            });
                        }
                        w.push(ws);
                    }
                    weights = Some(w);
                }
                // Counted by `select`; the consumer releases `total`.
                let total: usize = raw.iter().map(|r| r.samples.len()).sum();
                let series: Vec<Series> = raw
                    .into_iter()
                    .map(|mut rs| {
                        rs.samples.retain(|s| !is_stale_nan(s.v));
                        Series {
                            labels: rs.labels,
                            points: rs.samples,
                            drop_name: false,
                        }
                    })
                    .collect();
                Ok(MatrixSource {
                    series,
                    range,
                    offset,
                    at,
                    total,
                    planned: plan.map(|p| p.aggr),
                    weights,
                })
            }
            Expr::Subquery(sq) => {
                let range = dur_ms(&sq.range);
                let offset = offset_ms(&sq.offset);
                let at = self.resolve_at(&sq.at);
                let step = match &sq.step {
                    Some(s) if dur_ms(s) > 0 => dur_ms(s),
                    _ => self.default_subquery_step,
                };
                if step <= 0 {
                    return Err(QueryError::bad_data("zero or negative subquery step"));
                }
                let (first, last) = match at {
                    Some(a) => (a - offset, a - offset),
                    None => (span.start - offset, span.end - offset),
                };
                let lo = first - range;
                let mut start = step * (lo / step);
                if start <= lo {
                    start += step;
                }
                let inner = Span {
                    start,
                    end: last,
                    step,
                };
                let points = inner.len() as u64;
                if points > 50_000_000 {
                    return Err(too_many_samples());
                }
                let v = self.eval(&sq.expr, inner, depth + 1)?;
                let series = match v {
                    Val::Vector(s) => s,
                    Val::Scalar(vals) => vec![Series {
                        labels: Labels::empty(),
                        points: vals
                            .iter()
                            .enumerate()
                            .map(|(i, v)| Sample::new(inner.t(i), *v))
                            .collect(),
                        drop_name: false,
                    }],
                    other => {
                        return Err(QueryError::bad_data(format!(
                            "subquery is only allowed on instant vector, got {} instead",
                            other.type_name()
                        )));
                    }
                };
                let total = series.iter().map(|s| s.points.len()).sum();
                Ok(MatrixSource {
                    series,
                    range,
                    offset,
                    at,
                    total,
                    planned: None,
                    weights: None,
                })
            }
            other => Err(QueryError::bad_data(format!(
                "expected a range vector, got {other}"
            ))),
        }
    }
}

/// Input of a range function, see [`Ctx::matrix_source`].
#[derive(Debug)]
pub(crate) struct MatrixSource {
    pub(crate) series: Vec<Series>,
    pub(crate) range: i64,
    pub(crate) offset: i64,
    pub(crate) at: Option<i64>,
    pub(crate) total: usize,
    /// The series are this downsampled aggregate per window (mixed with raw samples where the
    /// plan reads raw data, converted to the same meaning: counts of 1, a compensated counter).
    pub(crate) planned: Option<DownsampleAggregate>,
    /// For `avg_over_time` over windows: each series' window counts (its points are sums).
    pub(crate) weights: Option<Vec<Vec<f64>>>,
}

/// Collects per-step output samples into series keyed by labels; a label set appearing twice
/// at one step is Prometheus' "vector cannot contain metrics with the same labelset".
#[derive(Debug, Default)]
pub(crate) struct Collector {
    index: HashMap<Labels, usize>,
    pub(crate) series: Vec<Series>,
}

impl Collector {
    pub(crate) fn new() -> Collector {
        Collector::default()
    }

    pub(crate) fn push(&mut self, labels: Labels, drop_name: bool, t: i64, v: f64) -> Result<()> {
        match self.index.get(&labels) {
            Some(&i) => {
                let s = &mut self.series[i];
                if s.points.last().is_some_and(|p| p.t == t) {
                    return Err(QueryError::execution(
                        "vector cannot contain metrics with the same labelset",
                    ));
                }
                s.drop_name |= drop_name;
                s.points.push(Sample::new(t, v));
            }
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels,
                    points: vec![Sample::new(t, v)],
                    drop_name,
                });
            }
        }
        Ok(())
    }

    /// Pushes by a precomputed output slot (same labels every time).
    pub(crate) fn slot(&mut self, labels: &Labels, drop_name: bool) -> usize {
        match self.index.get(labels) {
            Some(&i) => i,
            None => {
                self.index.insert(labels.clone(), self.series.len());
                self.series.push(Series {
                    labels: labels.clone(),
                    points: Vec::new(),
                    drop_name,
                });
                self.series.len() - 1
            }
        }
    }

    pub(crate) fn push_slot(&mut self, slot: usize, t: i64, v: f64) -> Result<()> {
        let s = &mut self.series[slot];
        if s.points.last().is_some_and(|p| p.t == t) {
            return Err(QueryError::execution(
                "vector cannot contain metrics with the same labelset",
            ));
        }
        s.points.push(Sample::new(t, v));
        Ok(())
    }

    pub(crate) fn finish(self) -> Vec<Series> {
        self.series
            .into_iter()
            .filter(|s| !s.points.is_empty())
            .collect()
    }
}

/// One element of an instant vector at one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elem {
    /// Index of the series in its input.
    pub(crate) s: usize,
    pub(crate) v: f64,
}

/// Walks `series` step by step: calls `f(step index, t, present elements)`.
pub(crate) fn for_each_step(
    series: &[Series],
    span: Span,
    f: impl FnMut(usize, i64, &[Elem]) -> Result<()>,
) -> Result<()> {
    for_each_step_in(series, span, 0, span.len(), f)
}

/// [`for_each_step`] over the steps `lo..hi` of `span` only.
pub(crate) fn for_each_step_in(
    series: &[Series],
    span: Span,
    lo: usize,
    hi: usize,
    mut f: impl FnMut(usize, i64, &[Elem]) -> Result<()>,
) -> Result<()> {
    if lo >= hi {
        return Ok(());
    }
    // Transpose a chunk of steps at a time: walking each series' points sequentially and
    // appending to per-step rows is far more cache-friendly than visiting every series at every
    // step. Rows list their elements in series order, as the step-by-step walk would.
    let ns = series.len().max(1);
    let chunk = ((1usize << 20) / ns).clamp(1, hi - lo);
    let t0 = span.t(lo);
    let mut cursors: Vec<usize> = series
        .iter()
        .map(|s| {
            if lo == 0 {
                0
            } else {
                s.points.partition_point(|p| p.t < t0)
            }
        })
        .collect();
    let mut rows: Vec<Vec<Elem>> = vec![Vec::new(); chunk];
    let mut c_lo = lo;
    while c_lo < hi {
        let c_hi = (c_lo + chunk).min(hi);
        let t_last = span.t(c_hi - 1);
        for r in rows.iter_mut() {
            r.clear();
        }
        for (si, s) in series.iter().enumerate() {
            let mut c = cursors[si];
            while let Some(p) = s.points.get(c) {
                if p.t > t_last {
                    break;
                }
                if p.t >= span.t(c_lo) && (p.t - span.start) % span.step == 0 {
                    rows[span.index(p.t) - c_lo].push(Elem { s: si, v: p.v });
                }
                c += 1;
            }
            cursors[si] = c;
        }
        for (k, row) in rows.iter().enumerate().take(c_hi - c_lo) {
            let i = c_lo + k;
            f(i, span.t(i), row)?;
        }
        c_lo = c_hi;
    }
    Ok(())
}

/// Name of an operator/aggregator token.
pub(crate) fn tok(t: &promql_parser::parser::token::TokenType) -> String {
    t.to_string().to_lowercase()
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` (exponent when it is < -4 or >= `eprec`; Go's
/// `%g` uses 6, `%v` 21).
pub(crate) fn format_float_go(v: f64, eprec: i32) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    if v == 0.0 {
        return if v.is_sign_negative() {
            "-0".into()
        } else {
            "0".into()
        };
    }
    let s = format!("{v:e}");
    let Some((m, e)) = s.split_once('e') else {
        return s;
    };
    let exp: i32 = e.parse().unwrap_or(0);
    if exp < -4 || exp >= eprec {
        let (sign, digits) = if exp < 0 {
            ('-', (-exp).to_string())
        } else {
            ('+', exp.to_string())
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits
        };
        return format!("{m}e{sign}{digits}");
    }
    format!("{v}")
}

/// The samples of `s` in `[mint, maxt]` (`cap`: expected count, for the allocation).
fn samples_in(
    s: &dyn tidemark_storage::Series,
    mint: i64,
    maxt: i64,
    cap: usize,
) -> Result<Vec<Sample>> {
    let mut it = s.iter();
    let mut samples = Vec::with_capacity(cap);
    if it.seek(mint) {
        loop {
            let smp = it.at();
            if smp.t > maxt {
                break;
            }
            samples.push(smp);
            if !it.next() {
                break;
            }
        }
    }
    if let Some(e) = it.err() {
        return Err(e.into());
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_float_formatting() {
        assert_eq!(format_float_go(0.5, 6), "0.5");
        assert_eq!(format_float_go(1e6, 6), "1e+06");
        assert_eq!(format_float_go(123456.0, 6), "123456");
        assert_eq!(format_float_go(1e-5, 21), "1e-05");
        assert_eq!(format_float_go(1.1, 21), "1.1");
        assert_eq!(format_float_go(f64::NAN, 21), "NaN");
        assert_eq!(format_float_go(f64::NEG_INFINITY, 21), "-Inf");
        assert_eq!(format_float_go(1e21, 21), "1e+21");
    }

    #[test]
    fn span_steps() {
        let s = Span {
            start: 10,
            end: 40,
            step: 15,
        };
        assert_eq!(s.len(), 3);
        assert_eq!((s.t(0), s.t(2)), (10, 40));
        assert_eq!(s.index(25), 1);
        assert_eq!(
            Span {
                start: 5,
                end: 4,
                step: 1
            }
            .len(),
            0
        );
    }

    #[test]
    fn collector_rejects_duplicates_at_one_step() {
        let mut c = Collector::new();
        let l = Labels::from_pairs([("a", "b")]);
        c.push(l.clone(), false, 1, 1.0).unwrap();
        c.push(l.clone(), true, 2, 2.0).unwrap();
        assert!(c.push(l, false, 2, 3.0).is_err());
        let s = c.finish();
        assert_eq!(s.len(), 1);
        assert!(s[0].drop_name);
        assert_eq!(s[0].points.len(), 2);
    }
}
