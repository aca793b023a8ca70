//! `histogram_quantile`, `histogram_quantiles` and `histogram_fraction` over classic
//! (`le`-labelled) bucket series.

use std::collections::HashMap;

use promql_parser::parser::Expr;
use tidemark_model::{Labels, METRIC_NAME};

use crate::error::QueryError;
use crate::eval::{Collector, Ctx, Result, Span, Val, for_each_step, format_float_go};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    upper: f64,
    count: f64,
}

const MIN_NORMAL: f64 = 2.2250738585072014e-308;

/// Prometheus' `almost.Equal`.
pub(crate) fn almost_equal(a: f64, b: f64, eps: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < eps * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < eps
}

fn sort_coalesce(buckets: &mut Vec<Bucket>) {
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(l) if l.upper == b.upper => l.count += b.count,
            _ => out.push(*b),
        }
    }
    *buckets = out;
}

/// Returns (quantile, forced monotonicity).
fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    sort_coalesce(buckets);
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return (f64::NAN, false);
    }
    let mut forced = false;
    let mut prev = buckets[0].count;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.count;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, 1e-12) {
            b.count = prev;
            continue;
        }
        if cur < prev {
            b.count = prev;
            forced = true;
            continue;
        }
        prev = cur;
    }
    if buckets.len() < 2 {
        return (f64::NAN, forced);
    }
    let obs = buckets[buckets.len() - 1].count;
    if obs == 0.0 {
        return (f64::NAN, forced);
    }
    let mut rank = q * obs;
    let n = buckets.len() - 1;
    let b = buckets[..n].partition_point(|x| x.count < rank);
    if b == n {
        return (buckets[n - 1].upper, forced);
    }
    if b == 0 && buckets[0].upper <= 0.0 {
        return (buckets[0].upper, forced);
    }
    let mut start = 0.0;
    let end = buckets[b].upper;
    let mut count = buckets[b].count;
    if b > 0 {
        start = buckets[b - 1].upper;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    (start + (end - start) * (rank / count), forced)
}

fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<Bucket>) -> f64 {
    sort_coalesce(buckets);
    if buckets.last().is_none_or(|b| b.upper != f64::INFINITY) {
        return f64::NAN;
    }
    let count = buckets[buckets.len() - 1].count;
    if count == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, 0.0, 0.0);
    let (mut lower_set, mut upper_set) = (false, false);
    for (i, b) in buckets.iter().enumerate() {
        let mut lb = if i > 0 {
            buckets[i - 1].upper
        } else {
            f64::NEG_INFINITY
        };
        let ub = b.upper;
        if i == 0 && ub > 0.0 {
            lb = 0.0;
        }
        let interp = |v: f64| rank + (b.count - rank) * (v - lb) / (ub - lb);
        if !lower_set && lb >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && lb >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && lb < lower && ub > lower {
            lower_rank = edge_rank(lb, ub, rank, b.count).unwrap_or_else(|| interp(lower));
            lower_set = true;
        }
        if !upper_set && lb < upper && ub > upper {
            upper_rank = edge_rank(lb, ub, rank, b.count).unwrap_or_else(|| interp(upper));
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = b.count;
    }
    if !lower_set || lower_rank > count {
        lower_rank = count;
    }
    if !upper_set || upper_rank > count {
        upper_rank = count;
    }
    (upper_rank - lower_rank) / count
}

/// No interpolation inside an infinitely wide bucket: a value in the first bucket sits at its
/// upper edge, one in the `+Inf` bucket at its lower edge.
fn edge_rank(lb: f64, ub: f64, rank: f64, count: f64) -> Option<f64> {
    if lb == f64::NEG_INFINITY {
        Some(count)
    } else if ub == f64::INFINITY {
        Some(rank)
    } else {
        None
    }
}

/// OpenMetrics float text: integers get a `.0`.
fn om_float(v: f64) -> String {
    let s = crate::aggregate::format_value_label(v);
    if s.contains(['.', 'e', 'I', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn scalar(ctx: &Ctx<'_>, e: &Expr, span: Span, depth: usize) -> Result<Vec<f64>> {
    match ctx.eval(e, span, depth + 1)? {
        Val::Scalar(v) => Ok(v),
        _ => Err(QueryError::bad_data("expected scalar argument")),
    }
}

pub(crate) fn eval(
    ctx: &Ctx<'_>,
    name: &str,
    args: &[&Expr],
    span: Span,
    depth: usize,
) -> Result<Val> {
    // (vector argument index, per-step params)
    let (vi, qs, label): (usize, Vec<Vec<f64>>, Option<String>) = match name {
        "histogram_quantile" => (1, vec![scalar(ctx, args[0], span, depth)?], None),
        "histogram_fraction" => (
            2,
            vec![
                scalar(ctx, args[0], span, depth)?,
                scalar(ctx, args[1], span, depth)?,
            ],
            None,
        ),
        _ => {
            let label = match ctx.eval(args[1], span, depth + 1)? {
                Val::Str(s) => s,
                _ => {
                    return Err(QueryError::bad_data(
                        "histogram_quantiles needs a label name",
                    ));
                }
            };
            let mut qs = Vec::new();
            for a in &args[2..] {
                qs.push(scalar(ctx, a, span, depth)?);
            }
            (0, qs, Some(label))
        }
    };
    let arg_text = args[vi].to_string();
    let pos = ctx.pos_of(&arg_text, name);
    if name != "histogram_fraction" {
        for q in qs.iter().flatten() {
            if !(0.0..=1.0).contains(q) {
                ctx.warn(format!(
                    "PromQL warning: quantile value should be between 0 and 1, got {} {}",
                    format_float_go(*q, 21),
                    ctx.pos_of(&format_float_go(*q, 21), name)
                ));
            }
        }
    }
    let input = match ctx.eval(args[vi], span, depth + 1)? {
        Val::Vector(v) => v,
        _ => return Err(QueryError::bad_data("expected instant vector argument")),
    };
    if let Some(l) = &label
        && input.iter().any(|s| s.labels.has(l))
    {
        return Err(QueryError::execution(format!(
            "label {l:?} already exists in the input series of histogram_quantiles"
        )));
    }
    // Group series by labels without `le`.
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<Labels> = Vec::new();
    let mut group_of: Vec<Option<usize>> = Vec::with_capacity(input.len());
    let mut upper: Vec<f64> = Vec::with_capacity(input.len());
    for s in &input {
        let le = s.labels.get_or_empty("le");
        match parse_le(le) {
            Some(u) => {
                let g = s.labels.drop_names(&["le"]);
                let i = *index.entry(g.clone()).or_insert_with(|| {
                    groups.push(g);
                    groups.len() - 1
                });
                group_of.push(Some(i));
                upper.push(u);
            }
            None => {
                ctx.warn(format!(
                    "PromQL warning: bucket label \"le\" is missing or has a malformed value of {:?} for metric name {:?} {pos}",
                    le,
                    s.labels.get_or_empty(METRIC_NAME)
                ));
                group_of.push(None);
                upper.push(f64::NAN);
            }
        }
    }
    let mut out = Collector::new();
    let mut buckets: Vec<Vec<Bucket>> = vec![Vec::new(); groups.len()];
    let mut touched: Vec<usize> = Vec::new();
    let mut out_labels: HashMap<(usize, usize), Labels> = HashMap::new();
    for_each_step(&input, span, |step, t, elems| {
        touched.clear();
        for e in elems {
            if let Some(g) = group_of[e.s] {
                if buckets[g].is_empty() {
                    touched.push(g);
                }
                buckets[g].push(Bucket {
                    upper: upper[e.s],
                    count: e.v,
                });
            }
        }
        for &g in &touched {
            let mut b = std::mem::take(&mut buckets[g]);
            match name {
                "histogram_fraction" => {
                    let v = bucket_fraction(qs[0][step], qs[1][step], &mut b);
                    out.push(groups[g].clone(), true, t, v)?;
                }
                "histogram_quantile" => {
                    let (v, forced) = bucket_quantile(qs[0][step], &mut b);
                    if forced {
                        ctx.info(format!(
                            "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {:?} {pos}",
                            groups[g].get_or_empty(METRIC_NAME)
                        ));
                    }
                    out.push(groups[g].clone(), true, t, v)?;
                }
                _ => {
                    let l = label.as_deref().unwrap_or("quantile");
                    for (qi, q) in qs.iter().enumerate() {
                        let mut bb = b.clone();
                        let (v, forced) = bucket_quantile(q[step], &mut bb);
                        if forced {
                            ctx.info(format!(
                                "PromQL info: input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {:?} {pos}",
                                groups[g].get_or_empty(METRIC_NAME)
                            ));
                        }
                        let labels = out_labels
                            .entry((g, qi))
                            .or_insert_with(|| {
                                let mut lb = groups[g].to_builder();
                                lb.set(l, &om_float(q[step]));
                                lb.build()
                            })
                            .clone();
                        out.push(labels, true, t, v)?;
                    }
                }
            }
            b.clear();
            buckets[g] = b;
        }
        Ok(())
    })?;
    Ok(Val::Vector(out.finish()))
}

fn parse_le(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs
            .iter()
            .map(|&(upper, count)| Bucket { upper, count })
            .collect()
    }

    #[test]
    fn quantile_interpolates_within_buckets() {
        let mut x = b(&[(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)]);
        assert_eq!(bucket_quantile(0.5, &mut x), (1.0, false));
        let mut x = b(&[(2.0, 20.0), (1.0, 10.0), (f64::INFINITY, 20.0)]);
        assert_eq!(bucket_quantile(0.75, &mut x).0, 1.5);
        // Highest finite bound when the rank falls into +Inf.
        let mut x = b(&[(1.0, 10.0), (f64::INFINITY, 20.0)]);
        assert_eq!(bucket_quantile(0.99, &mut x).0, 1.0);
        // No +Inf bucket: NaN; q outside [0, 1]: -Inf / +Inf.
        assert!(bucket_quantile(0.5, &mut b(&[(1.0, 1.0)])).0.is_nan());
        assert_eq!(
            bucket_quantile(-1.0, &mut b(&[(1.0, 1.0)])).0,
            f64::NEG_INFINITY
        );
        assert_eq!(bucket_quantile(2.0, &mut b(&[(1.0, 1.0)])).0, f64::INFINITY);
        // Non-monotonic counts are fixed and reported.
        let mut x = b(&[(1.0, 10.0), (2.0, 5.0), (f64::INFINITY, 10.0)]);
        assert!(bucket_quantile(0.5, &mut x).1);
    }

    #[test]
    fn fraction_and_almost_equal() {
        let mut x = b(&[(1.0, 10.0), (2.0, 20.0), (f64::INFINITY, 20.0)]);
        assert!((bucket_fraction(0.0, 1.0, &mut x) - 0.5).abs() < 1e-12);
        assert_eq!(bucket_fraction(2.0, 1.0, &mut x), 0.0);
        assert!(almost_equal(1.0, 1.0 + 1e-9, 1e-6));
        assert!(!almost_equal(1.0, 1.001, 1e-6));
        assert!(almost_equal(f64::NAN, f64::NAN, 1e-6));
        assert_eq!(om_float(0.0), "0.0");
        assert_eq!(om_float(0.25), "0.25");
    }
}
