//! Rule files in Prometheus' format (`groups:` of `record`/`alert` rules) and their validation,
//! the same checks `promtool check rules` makes.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};
use tidemark_scrape::config::Duration;

use crate::error::{Error, Result};
use crate::template;

/// One rule file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    #[serde(default)]
    pub groups: Vec<GroupDef>,
    /// Tidemark extension: service level objectives, each expanded by [`parse`] into one more
    /// group (`slo:<name>`) appended to `groups`. See [`crate::slo`].
    #[serde(default)]
    pub slos: Vec<crate::slo::SloDef>,
}

/// A `groups:` entry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDef {
    #[serde(default)]
    pub name: String,
    /// Evaluation interval; the global `evaluation_interval` when absent.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Evaluate this much in the past (for late data); the global `rule_query_offset` when absent.
    #[serde(default)]
    pub query_offset: Option<Duration>,
    /// Maximum series a rule may produce (alerts for alerting rules); 0 = no limit.
    #[serde(default)]
    pub limit: u64,
    /// Labels added to every rule of the group (rule labels win).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub rules: Vec<RuleDef>,
}

/// A `rules:` entry: exactly one of `record` and `alert`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default)]
    pub alert: Option<String>,
    #[serde(default, deserialize_with = "scalar_string")]
    pub expr: String,
    #[serde(default, rename = "for")]
    pub for_: Option<Duration>,
    #[serde(default)]
    pub keep_firing_for: Option<Duration>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl RuleDef {
    /// The rule's name (record or alert).
    pub fn name(&self) -> &str {
        self.record
            .as_deref()
            .or(self.alert.as_deref())
            .unwrap_or("")
    }
}

/// `expr: 1` is a YAML number but a valid expression: accept any scalar.
fn scalar_string<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    let v = serde_yaml_ng::Value::deserialize(d)?;
    match v {
        serde_yaml_ng::Value::String(s) => Ok(s),
        serde_yaml_ng::Value::Number(n) => Ok(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Ok(b.to_string()),
        serde_yaml_ng::Value::Null => Ok(String::new()),
        _ => Err(serde::de::Error::custom("expr must be a string")),
    }
}

/// True for a legacy Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':' => {}
        _ => return false,
    }
    c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// True for a legacy Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
pub fn is_valid_label_name(s: &str) -> bool {
    let mut c = s.chars();
    match c.next() {
        Some(f) if f.is_ascii_alphabetic() || f == '_' => {}
        _ => return false,
    }
    c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Parses rule-file text (no validation beyond the YAML shape).
pub fn parse(text: &str, path: &str) -> Result<RuleFile> {
    if text.trim().is_empty() {
        return Ok(RuleFile::default());
    }
    let mut f: RuleFile = serde_yaml_ng::from_str(text).map_err(|e| {
        let loc = e.location();
        Error::Parse {
            path: path.to_string(),
            line: loc.as_ref().map(|l| l.line()).unwrap_or(0),
            msg: e.to_string(),
        }
    })?;
    for s in &f.slos {
        let g = crate::slo::generate(s).map_err(|msg| Error::Parse {
            path: path.to_string(),
            line: 0,
            msg,
        })?;
        f.groups.push(g);
    }
    Ok(f)
}

/// Every problem `promtool check rules` would report for `f`; empty when the file is valid.
pub fn validate(f: &RuleFile) -> Vec<String> {
    let mut errs = Vec::new();
    let mut names = HashSet::new();
    for g in &f.groups {
        if g.name.is_empty() {
            errs.push("Groupname must not be empty".to_string());
        }
        if !names.insert(g.name.as_str()) {
            errs.push(format!(
                "groupname: \"{}\" is repeated in the same file",
                g.name
            ));
        }
        if let Some(i) = g.interval
            && i.0 <= 0
        {
            errs.push(format!("group {:?}: interval must be positive", g.name));
        }
        for k in g.labels.keys() {
            if !is_valid_label_name(k) {
                errs.push(format!("group {:?}: invalid label name: {k}", g.name));
            }
        }
        for (i, r) in g.rules.iter().enumerate() {
            for e in validate_rule(r) {
                errs.push(format!(
                    "group {:?}, rule {}, {:?}: {e}",
                    g.name,
                    i + 1,
                    r.name()
                ));
            }
        }
    }
    errs
}

fn validate_rule(r: &RuleDef) -> Vec<String> {
    let mut errs = Vec::new();
    match (&r.record, &r.alert) {
        (Some(_), Some(_)) => errs.push("only one of 'record' and 'alert' must be set".into()),
        (None, None) => errs.push("one of 'record' or 'alert' must be set".into()),
        (Some(rec), None) if rec.is_empty() => {
            errs.push("one of 'record' or 'alert' must be set".into())
        }
        (None, Some(a)) if a.is_empty() => {
            errs.push("one of 'record' or 'alert' must be set".into())
        }
        _ => {}
    }
    if r.expr.is_empty() {
        errs.push("field 'expr' must be set in rule".into());
    } else if let Err(e) = promql_parser::parser::parse(&r.expr) {
        errs.push(format!("could not parse expression: {e}"));
    }
    if let Some(rec) = &r.record {
        if !r.annotations.is_empty() {
            errs.push("invalid field 'annotations' in recording rule".into());
        }
        if r.for_.is_some_and(|d| d.0 != 0) {
            errs.push("invalid field 'for' in recording rule".into());
        }
        if r.keep_firing_for.is_some_and(|d| d.0 != 0) {
            errs.push("invalid field 'keep_firing_for' in recording rule".into());
        }
        if !rec.is_empty() && !is_valid_metric_name(rec) {
            errs.push(format!("invalid recording rule name: {rec}"));
        }
    }
    for (k, v) in &r.labels {
        if !is_valid_label_name(k) {
            errs.push(format!("invalid label name: {k}"));
        }
        if r.alert.is_some()
            && let Err(e) = template::Template::parse(v)
        {
            errs.push(format!("label {k:?}: template: {e}"));
        }
    }
    for (k, v) in &r.annotations {
        if !is_valid_label_name(k) {
            errs.push(format!("invalid annotation name: {k}"));
        }
        if let Err(e) = template::Template::parse(v) {
            errs.push(format!("annotation {k:?}: template: {e}"));
        }
    }
    errs
}

/// A parsed and validated rule file.
#[derive(Debug, Clone)]
pub struct LoadedFile {
    pub path: String,
    pub file: RuleFile,
}

/// Reads, parses and validates one file. Validation problems become [`Error::Invalid`].
pub fn load(path: &Path) -> Result<LoadedFile> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: p.clone(),
        source: e,
    })?;
    let file = parse(&text, &p)?;
    let errs = validate(&file);
    if !errs.is_empty() {
        return Err(Error::Invalid { path: p, errs });
    }
    Ok(LoadedFile { path: p, file })
}

/// Expands `rule_files` globs (sorted, deduplicated, as Prometheus does). A pattern matching
/// nothing is not an error.
pub fn expand_globs(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for pat in patterns {
        let paths = glob::glob(pat).map_err(|e| Error::Glob {
            pattern: pat.clone(),
            msg: e.to_string(),
        })?;
        let mut v: Vec<PathBuf> = paths.filter_map(|p| p.ok()).collect();
        v.sort();
        for p in v {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// `promtool check rules`: for each file, `Ok(rule count)` or the list of problems.
pub fn check_files(paths: &[PathBuf]) -> Vec<(PathBuf, std::result::Result<usize, Vec<String>>)> {
    paths
        .iter()
        .map(|p| {
            let r = match load(p) {
                Ok(f) => Ok(f.file.groups.iter().map(|g| g.rules.len()).sum()),
                Err(Error::Invalid { errs, .. }) => Err(errs),
                Err(e) => Err(vec![e.to_string()]),
            };
            (p.clone(), r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(text: &str) -> Vec<String> {
        match parse(text, "t.yml") {
            Ok(f) => validate(&f),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn valid_file_has_no_errors() {
        let t = "groups:\n- name: a\n  interval: 10s\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n  - alert: Down\n    expr: up == 0\n    for: 5m\n    keep_firing_for: 1m\n    labels: {severity: page}\n    annotations: {summary: '{{ $labels.instance }} down ({{ $value | humanize }})'}\n";
        assert_eq!(errs(t), Vec::<String>::new());
    }

    #[test]
    fn numeric_expr_is_accepted() {
        let f = parse(
            "groups:\n- name: a\n  rules:\n  - record: one\n    expr: 1\n",
            "t",
        )
        .unwrap();
        assert_eq!(f.groups[0].rules[0].expr, "1");
    }

    #[test]
    fn each_problem_is_reported() {
        let cases = [
            (
                "groups:\n- name: a\n  rules:\n  - record: x\n    expr: sum(\n",
                "could not parse",
            ),
            (
                "groups:\n- name: a\n  rules: []\n- name: a\n  rules: []\n",
                "repeated",
            ),
            ("groups:\n- name: ''\n  rules: []\n", "must not be empty"),
            (
                "groups:\n- name: a\n  rules:\n  - record: 'a-b'\n    expr: up\n",
                "invalid recording rule name",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - alert: A\n    expr: up\n    labels: {'1x': y}\n",
                "invalid label name",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - alert: A\n    record: b\n    expr: up\n",
                "only one",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - expr: up\n",
                "one of 'record' or 'alert'",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - record: a\n    expr: up\n    for: 1m\n",
                "'for'",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - record: a\n    expr: up\n    annotations: {a: b}\n",
                "'annotations'",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - alert: a\n",
                "'expr' must be set",
            ),
            (
                "groups:\n- name: a\n  rules:\n  - alert: a\n    expr: up\n    annotations: {a: '{{ $labels.x '}\n",
                "template",
            ),
            ("groups:\n- name: a\n  bogus: 1\n", "unknown field"),
        ];
        for (text, want) in cases {
            let e = errs(text);
            assert!(
                e.iter().any(|m| m.contains(want)),
                "{text:?}: want {want:?}, got {e:?}"
            );
        }
    }

    #[test]
    fn name_rules() {
        assert!(is_valid_metric_name("job:up:sum"));
        assert!(!is_valid_metric_name("0a"));
        assert!(is_valid_label_name("_a1"));
        assert!(!is_valid_label_name("a:b"));
    }
}
