//! Series selectors: `match[]` parameters (`up{job="a"}`) and the selectors inside a PromQL
//! expression (for `/api/v1/query_exemplars`), parsed with promql-parser and turned into
//! tidemark matchers. A selector with `or` inside its braces yields one matcher set per branch.

use promql_parser::label::{MatchOp, Matcher as PMatcher};
use promql_parser::parser::{Expr, VectorSelector};
use tidemark_model::{METRIC_NAME, MatchType, Matcher};

use crate::error::{ApiError, ApiResult};

fn convert(m: &PMatcher) -> Result<Matcher, String> {
    let kind = match m.op {
        MatchOp::Equal => MatchType::Equal,
        MatchOp::NotEqual => MatchType::NotEqual,
        MatchOp::Re(_) => MatchType::Regex,
        MatchOp::NotRe(_) => MatchType::NotRegex,
    };
    Matcher::new(kind, m.name.clone(), m.value.clone()).map_err(|e| e.to_string())
}

/// The matcher sets of one vector selector (one per `or` branch).
fn selector_sets(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>, String> {
    let mut base: Vec<Matcher> = Vec::new();
    if let Some(n) = &vs.name {
        base.push(Matcher::equal(METRIC_NAME, n.clone()));
    }
    let mut out = Vec::new();
    if vs.matchers.or_matchers.is_empty() {
        let mut set = base.clone();
        for m in &vs.matchers.matchers {
            set.push(convert(m)?);
        }
        out.push(set);
    } else {
        for branch in &vs.matchers.or_matchers {
            let mut set = base.clone();
            for m in branch.iter().chain(vs.matchers.matchers.iter()) {
                set.push(convert(m)?);
            }
            out.push(set);
        }
    }
    Ok(out)
}

/// Parses one `match[]` value; errors use Prometheus' wording.
pub(crate) fn parse_match(s: &str) -> ApiResult<Vec<Vec<Matcher>>> {
    let expr = promql_parser::parser::parse(s).map_err(ApiError::bad_data)?;
    let Expr::VectorSelector(vs) = expr else {
        return Err(ApiError::bad_data(format!(
            "1:1: parse error: expected type vector selector in {s:?}"
        )));
    };
    let sets = selector_sets(&vs).map_err(ApiError::bad_data)?;
    for set in &sets {
        if set.iter().all(|m| m.matches_empty()) {
            return Err(ApiError::bad_data(
                "match[] must contain at least one non-empty matcher",
            ));
        }
    }
    Ok(sets)
}

/// Parses every `match[]` value into matcher sets (their union is selected).
pub(crate) fn parse_matches(values: &[&str]) -> ApiResult<Vec<Vec<Matcher>>> {
    let mut out = Vec::new();
    for v in values {
        out.extend(parse_match(v)?);
    }
    Ok(out)
}

/// The matcher sets of every vector selector inside `expr`.
pub(crate) fn extract_selectors(expr: &str) -> ApiResult<Vec<Vec<Matcher>>> {
    let e = promql_parser::parser::parse(expr).map_err(ApiError::bad_data)?;
    let mut out = Vec::new();
    walk(&e, &mut out).map_err(ApiError::bad_data)?;
    Ok(out)
}

fn walk(e: &Expr, out: &mut Vec<Vec<Matcher>>) -> Result<(), String> {
    match e {
        Expr::VectorSelector(vs) => out.extend(selector_sets(vs)?),
        Expr::MatrixSelector(ms) => out.extend(selector_sets(&ms.vs)?),
        Expr::Aggregate(a) => {
            walk(&a.expr, out)?;
            if let Some(p) = &a.param {
                walk(p, out)?;
            }
        }
        Expr::Unary(u) => walk(&u.expr, out)?,
        Expr::Binary(b) => {
            walk(&b.lhs, out)?;
            walk(&b.rhs, out)?;
        }
        Expr::Paren(p) => walk(&p.expr, out)?,
        Expr::Subquery(s) => walk(&s.expr, out)?,
        Expr::Call(c) => {
            for a in &c.args.args {
                walk(a, out)?;
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_params() {
        let s = parse_match(r#"up{job="a"}"#).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].iter().map(|m| m.to_string()).collect::<Vec<_>>(),
            vec![r#"__name__="up""#, r#"job="a""#]
        );
        assert!(parse_match(r#"{job=~".*"}"#).is_err());
        assert!(parse_match("rate(x[5m])").is_err());
        assert!(parse_match("{").is_err());
    }

    #[test]
    fn selectors_in_expressions() {
        let s = extract_selectors(r#"sum(rate(a{x="1"}[5m])) / on() b + 1"#).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1][0].value, "b");
    }
}
