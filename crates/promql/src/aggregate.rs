//! Aggregation operators (`sum`, `avg`, ..., `topk`, `count_values`, `limit_ratio`) with
//! `by`/`without`, evaluated step by step.

use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};
use rayon::prelude::*;
use tidemark_model::{Labels, METRIC_NAME};

use crate::error::QueryError;
use crate::eval::{
    Collector, Ctx, Elem, Result, Series, Span, Val, for_each_step, for_each_step_in, tok,
};

/// Neumaier-compensated summation step (Prometheus' `kahanSumInc`).
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus' `quantile` over unsorted values (NaNs sort first).
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Running state of one group at one step.
#[derive(Debug, Clone, Copy, Default)]
struct Acc {
    seen: bool,
    count: f64,
    value: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

pub(crate) fn group_labels(l: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => l.keep(&by.labels),
        Some(LabelModifier::Exclude(without)) => {
            let mut n: Vec<&str> = without.labels.iter().map(String::as_str).collect();
            n.push(METRIC_NAME);
            l.drop_names(&n)
        }
    }
}

fn eval_param(ctx: &Ctx<'_>, p: &Expr, span: Span, depth: usize) -> Result<Vec<f64>> {
    match ctx.eval(p, span, depth + 1)? {
        Val::Scalar(v) => Ok(v),
        other => Err(QueryError::bad_data(format!(
            "expected type scalar in aggregation parameter, got {}",
            other.type_name_pub()
        ))),
    }
}

pub(crate) fn eval_aggregate(
    ctx: &Ctx<'_>,
    a: &AggregateExpr,
    span: Span,
    depth: usize,
) -> Result<Val> {
    let op_s = tok(&a.op);
    let op = op_s.as_str();
    let input = match ctx.eval(&a.expr, span, depth + 1)? {
        Val::Vector(v) => v,
        other => {
            return Err(QueryError::bad_data(format!(
                "expected type instant vector in aggregation expression, got {}",
                other.type_name_pub()
            )));
        }
    };
    // Group of every input series.
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<(Labels, bool)> = Vec::new();
    let mut group_of = Vec::with_capacity(input.len());
    let keeps_name = matches!(&a.modifier, Some(LabelModifier::Include(by)) if by.labels.iter().any(|n| n == METRIC_NAME));
    for s in &input {
        let g = group_labels(&s.labels, &a.modifier);
        let i = *index.entry(g.clone()).or_insert_with(|| {
            groups.push((g, false));
            groups.len() - 1
        });
        if keeps_name && s.drop_name {
            groups[i].1 = true;
        }
        group_of.push(i);
    }
    let out = match op {
        "topk" | "bottomk" | "limitk" | "limit_ratio" => {
            let Some(p) = &a.param else {
                return Err(QueryError::bad_data(format!("{op} needs a parameter")));
            };
            let params = eval_param(ctx, p, span, depth)?;
            k_aggregate(
                ctx,
                op,
                &input,
                &group_of,
                groups.len(),
                &params,
                span,
                &p.to_string(),
            )?
        }
        "count_values" => {
            let name = match a.param.as_deref() {
                Some(Expr::StringLiteral(s)) => s.val.clone(),
                Some(p) => match ctx.eval(p, span, depth + 1)? {
                    Val::Str(s) => s,
                    _ => {
                        return Err(QueryError::bad_data(
                            "count_values needs a string parameter",
                        ));
                    }
                },
                None => {
                    return Err(QueryError::bad_data(
                        "count_values needs a string parameter",
                    ));
                }
            };
            if !crate::functions::valid_label_name_in(ctx, &name) {
                return Err(QueryError::execution(format!(
                    "invalid label name {name:?}"
                )));
            }
            count_values(&name, &input, &group_of, &groups, span)?
        }
        _ => {
            let params = match (&a.param, op) {
                (Some(p), "quantile") => Some(eval_param(ctx, p, span, depth)?),
                _ => None,
            };
            if let Some(ps) = &params {
                for q in ps {
                    if !(0.0..=1.0).contains(q) {
                        let p = a.param.as_ref().map(|p| p.to_string()).unwrap_or_default();
                        ctx.warn(format!(
                            "PromQL warning: quantile value should be between 0 and 1, got {} {}",
                            crate::eval::format_float_go(*q, 21),
                            ctx.pos_of(&p, "quantile")
                        ));
                    }
                }
            }
            simple_aggregate(op, &input, &group_of, &groups, span, params.as_deref())?
        }
    };
    let n: usize = out.iter().map(|s| s.points.len()).sum();
    ctx.add_samples(n)?;
    Ok(Val::Vector(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggOp {
    Sum,
    Avg,
    Count,
    Group,
    Min,
    Max,
    Stddev,
    Stdvar,
    Quantile,
}

impl AggOp {
    fn parse(op: &str) -> Option<AggOp> {
        Some(match op {
            "sum" => AggOp::Sum,
            "avg" => AggOp::Avg,
            "count" => AggOp::Count,
            "group" => AggOp::Group,
            "min" => AggOp::Min,
            "max" => AggOp::Max,
            "stddev" => AggOp::Stddev,
            "stdvar" => AggOp::Stdvar,
            "quantile" => AggOp::Quantile,
            _ => return None,
        })
    }
}

/// Adds one value to a group's running state (Prometheus' aggregation arithmetic).
#[inline]
fn acc_add(op: AggOp, a: &mut Acc, f: f64) {
    if !a.seen {
        *a = Acc {
            seen: true,
            count: 1.0,
            value: f,
            c: 0.0,
            mean: f,
            incremental: false,
        };
        match op {
            AggOp::Count | AggOp::Group => a.value = 1.0,
            AggOp::Stddev | AggOp::Stdvar => a.value = if f.is_finite() { 0.0 } else { f64::NAN },
            _ => {}
        }
        return;
    }
    match op {
        AggOp::Sum => (a.value, a.c) = kahan_inc(f, a.value, a.c),
        AggOp::Avg => {
            a.count += 1.0;
            if !a.incremental {
                let (nv, nc) = kahan_inc(f, a.value, a.c);
                if !nv.is_infinite() {
                    a.value = nv;
                    a.c = nc;
                    return;
                }
                a.incremental = true;
                a.mean = a.value / (a.count - 1.0);
                a.c /= a.count - 1.0;
            }
            let q = (a.count - 1.0) / a.count;
            (a.mean, a.c) = kahan_inc(f / a.count, q * a.mean, q * a.c);
        }
        AggOp::Count => a.value += 1.0,
        AggOp::Max if a.value < f || a.value.is_nan() => a.value = f,
        AggOp::Min if a.value > f || a.value.is_nan() => a.value = f,
        AggOp::Stddev | AggOp::Stdvar => {
            a.count += 1.0;
            let delta = f - a.mean;
            a.mean += delta / a.count;
            a.value += delta * (f - a.mean);
        }
        _ => {}
    }
}

#[inline]
fn acc_value(op: AggOp, a: &Acc) -> f64 {
    match op {
        AggOp::Sum => a.value + a.c,
        AggOp::Avg if a.incremental => a.mean + a.c,
        AggOp::Avg => (a.value + a.c) / a.count,
        AggOp::Stdvar => a.value / a.count,
        AggOp::Stddev => (a.value / a.count).sqrt(),
        _ => a.value,
    }
}

/// Most group x step cells the dense path holds per chunk.
const DENSE_CELLS: usize = 1 << 18;

fn simple_aggregate(
    op: &str,
    input: &[Series],
    group_of: &[usize],
    groups: &[(Labels, bool)],
    span: Span,
    params: Option<&[f64]>,
) -> Result<Vec<Series>> {
    let Some(op) = AggOp::parse(op) else {
        return Err(QueryError::bad_data(format!("unknown aggregation {op:?}")));
    };
    let ng = groups.len();
    let n = span.len();
    let mut out: Vec<Series> = groups
        .iter()
        .map(|(l, d)| Series {
            labels: l.clone(),
            points: Vec::new(),
            drop_name: *d,
        })
        .collect();
    if op != AggOp::Quantile && ng > 0 && n > 1 {
        // Dense path: step chunks in parallel; each walks the series in input order, so every
        // cell sees its values in the same order as the step-by-step path (same rounding).
        let chunk =
            (DENSE_CELLS / ng).clamp(1, n.div_ceil(2 * rayon::current_num_threads()).max(16));
        let nchunks = n.div_ceil(chunk);
        let parts: Vec<Vec<Vec<tidemark_model::Sample>>> = (0..nchunks)
            .into_par_iter()
            .map(|c| {
                let lo = c * chunk;
                let hi = (lo + chunk).min(n);
                let len = hi - lo;
                let mut acc = vec![Acc::default(); ng * len];
                let (tlo, thi) = (span.t(lo), span.t(hi - 1));
                for (si, s) in input.iter().enumerate() {
                    let base = group_of[si] * len;
                    let start = s.points.partition_point(|p| p.t < tlo);
                    // Step index of each point; consecutive steps avoid the division.
                    let (mut prev_t, mut k) = (i64::MIN, 0usize);
                    for p in &s.points[start..] {
                        if p.t > thi {
                            break;
                        }
                        k = if prev_t != i64::MIN && p.t == prev_t + span.step {
                            k + 1
                        } else {
                            span.index(p.t) - lo
                        };
                        prev_t = p.t;
                        acc_add(op, &mut acc[base + k], p.v);
                    }
                }
                (0..ng)
                    .map(|g| {
                        acc[g * len..(g + 1) * len]
                            .iter()
                            .enumerate()
                            .filter(|(_, a)| a.seen)
                            .map(|(k, a)| {
                                tidemark_model::Sample::new(span.t(lo + k), acc_value(op, a))
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        for part in parts {
            for (g, pts) in part.into_iter().enumerate() {
                out[g].points.extend(pts);
            }
        }
        return Ok(out.into_iter().filter(|s| !s.points.is_empty()).collect());
    }
    let mut acc = vec![Acc::default(); ng];
    let mut qvals: Vec<Vec<f64>> = if op == AggOp::Quantile {
        vec![Vec::new(); ng]
    } else {
        Vec::new()
    };
    let mut touched: Vec<usize> = Vec::with_capacity(ng);
    for_each_step(input, span, |step, t, elems| {
        touched.clear();
        for e in elems {
            let g = group_of[e.s];
            if !acc[g].seen {
                touched.push(g);
            }
            if op == AggOp::Quantile {
                acc[g].seen = true;
                qvals[g].push(e.v);
            } else {
                acc_add(op, &mut acc[g], e.v);
            }
        }
        touched.sort_unstable();
        for &g in &touched {
            let v = if op == AggOp::Quantile {
                let q = params
                    .and_then(|p| p.get(step))
                    .copied()
                    .unwrap_or(f64::NAN);
                let v = quantile(q, &mut qvals[g]);
                qvals[g].clear();
                v
            } else {
                acc_value(op, &acc[g])
            };
            acc[g].seen = false;
            out[g].points.push(tidemark_model::Sample::new(t, v));
        }
        Ok(())
    })?;
    Ok(out.into_iter().filter(|s| !s.points.is_empty()).collect())
}

fn count_values(
    name: &str,
    input: &[Series],
    group_of: &[usize],
    groups: &[(Labels, bool)],
    span: Span,
) -> Result<Vec<Series>> {
    let mut out = Collector::new();
    let mut counts: Vec<(usize, String, f64)> = Vec::new();
    let mut cache: HashMap<(usize, String), Labels> = HashMap::new();
    for_each_step(input, span, |_, t, elems| {
        counts.clear();
        for e in elems {
            let g = group_of[e.s];
            let vs = format_value_label(e.v);
            match counts.iter_mut().find(|(cg, cv, _)| *cg == g && *cv == vs) {
                Some(c) => c.2 += 1.0,
                None => counts.push((g, vs, 1.0)),
            }
        }
        for (g, vs, c) in counts.drain(..) {
            let labels = cache
                .entry((g, vs.clone()))
                .or_insert_with(|| {
                    let mut b = groups[g].0.to_builder();
                    b.set(name, &vs);
                    b.build()
                })
                .clone();
            out.push(labels, false, t, c)?;
        }
        Ok(())
    })?;
    Ok(out.finish())
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`.
pub(crate) fn format_value_label(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// The elements chosen at one step (timestamp, elements in output order).
type StepChoice = (i64, Vec<Elem>);

#[allow(clippy::too_many_arguments)]
fn k_aggregate(
    ctx: &Ctx<'_>,
    op: &str,
    input: &[Series],
    group_of: &[usize],
    ngroups: usize,
    params: &[f64],
    span: Span,
    param_text: &str,
) -> Result<Vec<Series>> {
    let n = span.len();
    // Where each series falls in [0, 1) for limit_ratio.
    let offsets: Vec<f64> = if op == "limit_ratio" {
        input
            .iter()
            .map(|s| s.labels.stable_hash() as f64 / u64::MAX as f64)
            .collect()
    } else {
        Vec::new()
    };
    let chunk = n.div_ceil(2 * rayon::current_num_threads()).max(8);
    let nchunks = n.div_ceil(chunk);
    // Per chunk: the chosen elements of every step, in output order.
    let parts: Vec<Result<Vec<StepChoice>>> = (0..nchunks)
        .into_par_iter()
        .map(|c| {
            let lo = c * chunk;
            let hi = (lo + chunk).min(n);
            let mut per_group: Vec<Vec<Elem>> = vec![Vec::new(); ngroups];
            let mut order: Vec<usize> = Vec::new();
            let mut res = Vec::with_capacity(hi - lo);
            for_each_step_in(input, span, lo, hi, |step, t, elems| {
                let p = params.get(step).copied().unwrap_or(f64::NAN);
                let mut chosen: Vec<Elem> = Vec::new();
                if op == "limit_ratio" {
                    if p.is_nan() {
                        return Err(QueryError::execution("Ratio value is NaN"));
                    }
                    let ratio = if !(-1.0..=1.0).contains(&p) {
                        let capped = p.clamp(-1.0, 1.0);
                        ctx.warn(format!(
                            "PromQL warning: ratio value should be between -1 and 1, got {}, capping to {} {}",
                            crate::eval::format_float_go(p, 21),
                            crate::eval::format_float_go(capped, 21),
                            ctx.pos_of(param_text, "limit_ratio")
                        ));
                        capped
                    } else {
                        p
                    };
                    if ratio == 0.0 {
                        return Ok(());
                    }
                    for e in elems {
                        let off = offsets[e.s];
                        if (ratio >= 0.0 && off < ratio) || (ratio < 0.0 && off >= 1.0 + ratio) {
                            chosen.push(*e);
                        }
                    }
                } else {
                    if p.is_nan() {
                        return Err(QueryError::execution("Parameter value is NaN"));
                    }
                    let k = if p >= i64::MAX as f64 { i64::MAX } else { p as i64 };
                    if k < 1 {
                        return Ok(());
                    }
                    let k = k.min(elems.len() as i64) as usize;
                    order.clear();
                    for e in elems {
                        let g = group_of[e.s];
                        if per_group[g].is_empty() {
                            order.push(g);
                        }
                        per_group[g].push(*e);
                    }
                    for &g in &order {
                        let v = &mut per_group[g];
                        match op {
                            "limitk" => v.truncate(k),
                            "topk" => top_k(v, k, |a, b| cmp_desc_nan_last(a.v, b.v)),
                            _ => top_k(v, k, |a, b| cmp_asc_nan_last(a.v, b.v)),
                        }
                        chosen.append(v);
                    }
                }
                if !chosen.is_empty() {
                    res.push((t, chosen));
                }
                Ok(())
            })?;
            Ok(res)
        })
        .collect();
    let mut out = Collector::new();
    let mut slots: Vec<Option<usize>> = vec![None; input.len()];
    for part in parts {
        for (t, chosen) in part? {
            for e in chosen {
                let slot = match slots[e.s] {
                    Some(s) => s,
                    None => {
                        let s = out.slot(&input[e.s].labels, input[e.s].drop_name);
                        slots[e.s] = Some(s);
                        s
                    }
                };
                out.push_slot(slot, t, e.v)?;
            }
        }
    }
    Ok(out.finish())
}

/// Keeps the `k` first elements of `v` in `cmp` order, sorted (linear selection, then a sort
/// of the `k` kept).
fn top_k(v: &mut Vec<Elem>, k: usize, cmp: impl Fn(&Elem, &Elem) -> std::cmp::Ordering) {
    if k < v.len() {
        v.select_nth_unstable_by(k, &cmp);
        v.truncate(k);
    }
    v.sort_by(&cmp);
}

fn cmp_desc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => b.partial_cmp(&a).unwrap_or(Equal),
    }
}

fn cmp_asc_nan_last(a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Equal,
        (true, false) => Greater,
        (false, true) => Less,
        _ => a.partial_cmp(&b).unwrap_or(Equal),
    }
}
