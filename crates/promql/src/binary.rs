//! Binary operators: arithmetic, comparison (with `bool`), set operators, vector matching with
//! `on`/`ignoring` and `group_left`/`group_right`.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::{BinaryExpr, LabelModifier, VectorMatchCardinality};
use tidemark_model::{Labels, METRIC_NAME};

use crate::error::QueryError;
use crate::eval::{Collector, Ctx, Result, Series, Span, Val, tok};

/// Applies `op` to two floats: the result and whether a comparison holds (always true for
/// arithmetic).
#[inline]
pub(crate) fn apply_op(op: &str, l: f64, r: f64) -> (f64, bool) {
    match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "%" => (l % r, true),
        "^" => (l.powf(r), true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

pub(crate) fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

fn is_set_op(op: &str) -> bool {
    matches!(op, "and" | "or" | "unless")
}

/// The matching labels of a series: `on(...)` keeps the names, `ignoring(...)` drops them and
/// the metric name.
fn signature(l: &Labels, on: bool, names: &[String]) -> Labels {
    if on {
        l.keep(names)
    } else {
        let mut n: Vec<&str> = names.iter().map(String::as_str).collect();
        n.push(METRIC_NAME);
        l.drop_names(&n)
    }
}

pub(crate) fn eval_binary(ctx: &Ctx<'_>, b: &BinaryExpr, span: Span, depth: usize) -> Result<Val> {
    let op_s = tok(&b.op);
    let op = op_s.as_str();
    let return_bool = b.modifier.as_ref().is_some_and(|m| m.return_bool);
    let (l, r) = rayon::join(
        || ctx.eval(&b.lhs, span, depth + 1),
        || ctx.eval(&b.rhs, span, depth + 1),
    );
    let (l, r) = (l?, r?);
    match (l, r) {
        (Val::Scalar(a), Val::Scalar(bv)) => Ok(Val::Scalar(
            a.iter()
                .zip(bv.iter())
                .map(|(x, y)| {
                    let (v, keep) = apply_op(op, *x, *y);
                    if is_comparison(op) {
                        if keep { 1.0 } else { 0.0 }
                    } else {
                        v
                    }
                })
                .collect(),
        )),
        (Val::Vector(ls), Val::Scalar(rv)) => Ok(Val::Vector(vector_scalar(
            op,
            ls,
            &rv,
            span,
            false,
            return_bool,
        ))),
        (Val::Scalar(lv), Val::Vector(rs)) => Ok(Val::Vector(vector_scalar(
            op,
            rs,
            &lv,
            span,
            true,
            return_bool,
        ))),
        (Val::Vector(ls), Val::Vector(rs)) => {
            let (on, names) = match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
                Some(LabelModifier::Include(l)) => (true, l.labels.clone()),
                Some(LabelModifier::Exclude(l)) => (false, l.labels.clone()),
                None => (false, Vec::new()),
            };
            if is_set_op(op) {
                return Ok(Val::Vector(set_op(op, ls, rs, span, on, &names)?));
            }
            let card = b
                .modifier
                .as_ref()
                .map_or(VectorMatchCardinality::OneToOne, |m| m.card.clone());
            let out = vector_vector(ctx, op, ls, rs, span, on, &names, &card, return_bool)?;
            let n: usize = out.iter().map(|s| s.points.len()).sum();
            ctx.add_samples(n)?;
            Ok(Val::Vector(out))
        }
        (l, r) => Err(QueryError::bad_data(format!(
            "binary expression must contain only scalar and instant vector types, got {} and {}",
            l.type_name_pub(),
            r.type_name_pub()
        ))),
    }
}

impl Val {
    pub(crate) fn type_name_pub(&self) -> &'static str {
        match self {
            Val::Scalar(_) => "scalar",
            Val::Str(_) => "string",
            Val::Vector(_) => "instant vector",
            Val::Matrix(_) => "range vector",
        }
    }
}

fn vector_scalar(
    op: &str,
    mut vs: Vec<Series>,
    sc: &[f64],
    span: Span,
    swap: bool,
    return_bool: bool,
) -> Vec<Series> {
    let cmp = is_comparison(op);
    for s in &mut vs {
        s.points.retain_mut(|p| {
            let k = sc[span.index(p.t)];
            let (l, r) = if swap { (k, p.v) } else { (p.v, k) };
            let (mut v, keep) = apply_op(op, l, r);
            if cmp && swap {
                v = r;
            }
            if return_bool {
                p.v = if keep { 1.0 } else { 0.0 };
                return true;
            }
            if keep {
                p.v = v;
            }
            keep
        });
        if !cmp || return_bool {
            s.drop_name = true;
        }
    }
    vs.retain(|s| !s.points.is_empty());
    vs
}

fn set_op(
    op: &str,
    ls: Vec<Series>,
    rs: Vec<Series>,
    span: Span,
    on: bool,
    names: &[String],
) -> Result<Vec<Series>> {
    let lsig: Vec<Labels> = ls.iter().map(|s| signature(&s.labels, on, names)).collect();
    let rsig: Vec<Labels> = rs.iter().map(|s| signature(&s.labels, on, names)).collect();
    match op {
        "and" | "unless" => {
            // Per step: keep lhs points whose signature is (not) present on the rhs.
            let mut rset_per_step: Vec<HashSet<&Labels>> = vec![HashSet::new(); span.len()];
            for (i, s) in rs.iter().enumerate() {
                for p in &s.points {
                    rset_per_step[span.index(p.t)].insert(&rsig[i]);
                }
            }
            let want = op == "and";
            let mut out = Vec::with_capacity(ls.len());
            for (i, mut s) in ls.into_iter().enumerate() {
                let sig = &lsig[i];
                s.points
                    .retain(|p| rset_per_step[span.index(p.t)].contains(sig) == want);
                if !s.points.is_empty() {
                    out.push(s);
                }
            }
            Ok(out)
        }
        _ => {
            // or: all lhs points, plus rhs points whose signature is absent on the lhs at that step.
            let mut lset_per_step: Vec<HashSet<&Labels>> = vec![HashSet::new(); span.len()];
            for (i, s) in ls.iter().enumerate() {
                for p in &s.points {
                    lset_per_step[span.index(p.t)].insert(&lsig[i]);
                }
            }
            let mut keep_r: Vec<Series> = Vec::new();
            for (i, s) in rs.iter().enumerate() {
                let pts: Vec<_> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| !lset_per_step[span.index(p.t)].contains(&rsig[i]))
                    .collect();
                if !pts.is_empty() {
                    keep_r.push(Series {
                        labels: s.labels.clone(),
                        points: pts,
                        drop_name: s.drop_name,
                    });
                }
            }
            drop(lset_per_step);
            let mut out = ls;
            // Merge rhs series into lhs ones with identical labels (they never overlap in time
            // unless the signatures differ, which equal labels exclude).
            let mut idx: HashMap<Labels, usize> = out
                .iter()
                .enumerate()
                .map(|(i, s)| (s.labels.clone(), i))
                .collect();
            for s in keep_r {
                match idx.get(&s.labels) {
                    Some(&i) => {
                        let t = &mut out[i];
                        t.points.extend(s.points);
                        t.points.sort_by_key(|p| p.t);
                        t.drop_name |= s.drop_name;
                    }
                    None => {
                        idx.insert(s.labels.clone(), out.len());
                        out.push(s);
                    }
                }
            }
            Ok(out)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    ctx: &Ctx<'_>,
    op: &str,
    ls: Vec<Series>,
    rs: Vec<Series>,
    span: Span,
    on: bool,
    names: &[String],
    card: &VectorMatchCardinality,
    return_bool: bool,
) -> Result<Vec<Series>> {
    let _ = ctx;
    if ls.is_empty() || rs.is_empty() {
        return Ok(Vec::new());
    }
    let one_to_many = matches!(card, VectorMatchCardinality::OneToMany(_));
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let include: Vec<String> = card.labels().map(|l| l.labels.clone()).unwrap_or_default();
    // After a possible swap, `many` is the side whose labels form the result.
    let (many, one) = if one_to_many { (rs, ls) } else { (ls, rs) };
    let msig: Vec<Labels> = many
        .iter()
        .map(|s| signature(&s.labels, on, names))
        .collect();
    let osig: Vec<Labels> = one
        .iter()
        .map(|s| signature(&s.labels, on, names))
        .collect();
    // Signatures as dense ids: per-step matching then needs no hashing.
    let mut sig_ids: HashMap<&Labels, usize> = HashMap::new();
    let oid: Vec<usize> = osig
        .iter()
        .map(|l| {
            let n = sig_ids.len();
            *sig_ids.entry(l).or_insert(n)
        })
        .collect();
    let nsig = sig_ids.len();
    let mid: Vec<Option<usize>> = msig.iter().map(|l| sig_ids.get(l).copied()).collect();
    let cmp = is_comparison(op);
    let drop_name_op = !cmp || return_bool;
    // (many index, one index) -> (output slot, result labels)
    let mut result_slots: HashMap<(usize, usize), (usize, Labels)> = HashMap::new();
    let mut out = Collector::new();
    // Walk both sides step by step.
    let mut mc = vec![0usize; many.len()];
    let mut oc = vec![0usize; one.len()];
    let mut right: Vec<Option<(usize, f64)>> = vec![None; nsig];
    let mut right_touched: Vec<usize> = Vec::new();
    let mut matched_one: Vec<bool> = vec![false; nsig];
    let mut matched_many: HashMap<usize, HashSet<Labels>> = HashMap::new();
    let mut matched_touched: Vec<usize> = Vec::new();
    let relevant_many: Vec<usize> = (0..many.len()).filter(|&i| mid[i].is_some()).collect();
    for step in 0..span.len() {
        let t = span.t(step);
        for id in right_touched.drain(..) {
            right[id] = None;
        }
        for id in matched_touched.drain(..) {
            matched_one[id] = false;
        }
        matched_many.clear();
        for (j, s) in one.iter().enumerate() {
            let c = oc[j];
            if let Some(p) = s.points.get(c)
                && p.t == t
            {
                oc[j] = c + 1;
                if let Some((k, _)) = right[oid[j]] {
                    let side = if one_to_many { "left" } else { "right" };
                    let (mut a, mut b) = (&s.labels, &one[k].labels);
                    if b < a {
                        std::mem::swap(&mut a, &mut b);
                    }
                    return Err(QueryError::execution(format!(
                        "found duplicate series for the match group {} on the {side} hand-side of the operation: [{a}, {b}];many-to-many matching not allowed: matching labels must be unique on one side",
                        osig[j]
                    )));
                }
                right[oid[j]] = Some((j, p.v));
                right_touched.push(oid[j]);
            }
        }
        for &i in &relevant_many {
            let s = &many[i];
            let c = mc[i];
            let Some(p) = s.points.get(c) else { continue };
            if p.t != t {
                continue;
            }
            mc[i] = c + 1;
            let Some(id) = mid[i] else { continue };
            let Some((j, ov)) = right[id] else { continue };
            let (slot, labels) = result_slots.entry((i, j)).or_insert_with(|| {
                let l = result_metric(&s.labels, &one[j].labels, one_to_one, on, names, &include);
                (out.slot(&l, drop_name_op || s.drop_name), l)
            });
            let slot = *slot;
            if one_to_one {
                if matched_one[id] {
                    return Err(QueryError::execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)",
                    ));
                }
                matched_one[id] = true;
                matched_touched.push(id);
            } else if !matched_many.entry(id).or_default().insert(labels.clone()) {
                return Err(QueryError::execution(
                    "multiple matches for labels: grouping labels must ensure unique matches",
                ));
            }
            let (fl, fr) = if one_to_many { (ov, p.v) } else { (p.v, ov) };
            let (mut v, keep) = apply_op(op, fl, fr);
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
            } else if !keep {
                continue;
            }
            out.push_slot(slot, t, v)?;
        }
    }
    Ok(out.finish())
}

fn result_metric(
    l: &Labels,
    r: &Labels,
    one_to_one: bool,
    on: bool,
    names: &[String],
    include: &[String],
) -> Labels {
    let mut b = l.to_builder();
    if one_to_one {
        if on {
            b.retain(|n, _| names.iter().any(|x| x == n));
        } else {
            for n in names {
                b.del(n);
            }
        }
    }
    for n in include {
        match r.get(n) {
            Some(v) => b.set(n, v),
            None => b.del(n),
        };
    }
    b.build()
}
