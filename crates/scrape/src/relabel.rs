//! Relabeling: Prometheus' `relabel_configs` / `metric_relabel_configs` with every action
//! (replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep,
//! lowercase, uppercase). Semantics follow Prometheus' `model/relabel` package; regexes are fully
//! anchored (`^(?s:REGEX)$`).

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};
use tidemark_model::{Labels, LabelsBuilder};

/// A relabel action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replace => "replace",
            Action::Keep => "keep",
            Action::Drop => "drop",
            Action::KeepEqual => "keepequal",
            Action::DropEqual => "dropequal",
            Action::HashMod => "hashmod",
            Action::LabelMap => "labelmap",
            Action::LabelDrop => "labeldrop",
            Action::LabelKeep => "labelkeep",
            Action::Lowercase => "lowercase",
            Action::Uppercase => "uppercase",
        }
    }

    /// Case-insensitive, as Prometheus.
    pub fn parse(s: &str) -> Option<Action> {
        Some(match s.to_ascii_lowercase().as_str() {
            "replace" => Action::Replace,
            "keep" => Action::Keep,
            "drop" => Action::Drop,
            "keepequal" => Action::KeepEqual,
            "dropequal" => Action::DropEqual,
            "hashmod" => Action::HashMod,
            "labelmap" => Action::LabelMap,
            "labeldrop" => Action::LabelDrop,
            "labelkeep" => Action::LabelKeep,
            "lowercase" => Action::Lowercase,
            "uppercase" => Action::Uppercase,
            _ => return None,
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Action {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The default relabel regex.
pub const DEFAULT_REGEX: &str = "(.*)";

/// An anchored regex that remembers how it was written.
#[derive(Clone)]
pub struct RelabelRegex {
    src: String,
    re: regex::Regex,
}

impl RelabelRegex {
    /// Compiles `src` anchored at both ends, `.` matching newlines (Prometheus semantics).
    pub fn new(src: &str) -> Result<RelabelRegex, regex::Error> {
        let re = regex::Regex::new(&format!("^(?s:{src})$"))?;
        Ok(RelabelRegex {
            src: src.to_string(),
            re,
        })
    }
    pub fn as_str(&self) -> &str {
        &self.src
    }
    pub fn is_match(&self, s: &str) -> bool {
        self.re.is_match(s)
    }
    /// `template` with `$1`, `${name}` ... expanded against the match of `s`, or `None` when
    /// `s` does not match.
    pub fn expand(&self, s: &str, template: &str) -> Option<String> {
        let caps = self.re.captures(s)?;
        if !template.contains('$') {
            return Some(template.to_string());
        }
        let mut out = String::new();
        caps.expand(template, &mut out);
        Some(out)
    }
}

impl fmt::Debug for RelabelRegex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.src)
    }
}

impl PartialEq for RelabelRegex {
    fn eq(&self, o: &Self) -> bool {
        self.src == o.src
    }
}

impl Serialize for RelabelRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.src)
    }
}

/// One relabel step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawRelabelConfig")]
pub struct RelabelConfig {
    /// Default empty.
    pub source_labels: Vec<String>,
    /// Default `;`.
    pub separator: String,
    /// Default `(.*)`.
    pub regex: RelabelRegex,
    /// Default 0 (required for hashmod).
    pub modulus: u64,
    /// Default empty.
    pub target_label: String,
    /// Default `$1`.
    pub replacement: String,
    /// Default `replace`.
    pub action: Action,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRelabelConfig {
    source_labels: Option<Vec<String>>,
    separator: Option<String>,
    regex: Option<String>,
    modulus: Option<u64>,
    target_label: Option<String>,
    replacement: Option<String>,
    action: Option<String>,
}

fn has_var(s: &str) -> bool {
    s.contains('$')
}

impl TryFrom<RawRelabelConfig> for RelabelConfig {
    type Error = String;

    fn try_from(r: RawRelabelConfig) -> Result<Self, String> {
        let action = match r.action.as_deref() {
            None => Action::Replace,
            Some("") => return Err("relabel action cannot be empty".into()),
            Some(a) => Action::parse(a).ok_or_else(|| format!("unknown relabel action {a:?}"))?,
        };
        let regex_src = r.regex.clone().unwrap_or_else(|| DEFAULT_REGEX.to_string());
        let regex = RelabelRegex::new(&regex_src)
            .map_err(|e| format!("invalid regex {regex_src:?}: {e}"))?;
        let c = RelabelConfig {
            source_labels: r.source_labels.clone().unwrap_or_default(),
            separator: r.separator.clone().unwrap_or_else(|| ";".to_string()),
            regex,
            modulus: r.modulus.unwrap_or(0),
            target_label: r.target_label.clone().unwrap_or_default(),
            replacement: r.replacement.clone().unwrap_or_else(|| "$1".to_string()),
            action,
        };
        if action == Action::HashMod && c.modulus == 0 {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && c.target_label.is_empty() {
            return Err(format!(
                "relabel configuration for {action} action requires 'target_label' value"
            ));
        }
        if needs_target && action != Action::Replace && has_var(&c.target_label) {
            return Err(format!(
                "{:?} is invalid 'target_label' for {action} action",
                c.target_label
            ));
        }
        if matches!(action, Action::KeepEqual | Action::DropEqual)
            && (c.regex.as_str() != DEFAULT_REGEX
                || c.modulus != 0
                || c.separator != ";"
                || c.replacement != "$1")
        {
            return Err(format!(
                "{action} action requires only 'source_labels' and `target_label`, and no other fields"
            ));
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep)
            && (!c.source_labels.is_empty()
                || !c.target_label.is_empty()
                || c.modulus != 0
                || c.separator != ";"
                || c.replacement != "$1")
        {
            return Err(format!(
                "{action} action requires only 'regex', and no other fields"
            ));
        }
        Ok(c)
    }
}

impl RelabelConfig {
    /// A config from its parts (tests and programmatic use); validated like the YAML form.
    pub fn new(
        action: Action,
        source_labels: &[&str],
        regex: Option<&str>,
        target_label: Option<&str>,
        replacement: Option<&str>,
        modulus: Option<u64>,
    ) -> Result<RelabelConfig, String> {
        RelabelConfig::try_from(RawRelabelConfig {
            source_labels: (!source_labels.is_empty())
                .then(|| source_labels.iter().map(|s| s.to_string()).collect()),
            separator: None,
            regex: regex.map(str::to_string),
            modulus,
            target_label: target_label.map(str::to_string),
            replacement: replacement.map(str::to_string),
            action: Some(action.as_str().to_string()),
        })
    }
}

/// Applies `cfgs` to `labels`. `None` when a step drops the set (or it ends up empty).
pub fn process(labels: &Labels, cfgs: &[RelabelConfig]) -> Option<Labels> {
    if cfgs.is_empty() {
        return Some(labels.clone());
    }
    let mut b = labels.to_builder();
    if !process_builder(&mut b, cfgs) {
        return None;
    }
    let out = b.build();
    (!out.is_empty()).then_some(out)
}

/// Applies `cfgs` to a builder in place; false when a step drops the set.
pub fn process_builder(b: &mut LabelsBuilder, cfgs: &[RelabelConfig]) -> bool {
    cfgs.iter().all(|c| relabel(c, b))
}

fn relabel(c: &RelabelConfig, b: &mut LabelsBuilder) -> bool {
    let val = match c.source_labels.len() {
        0 => String::new(),
        1 => b.get(&c.source_labels[0]).unwrap_or("").to_string(),
        _ => {
            let mut v = String::new();
            for (i, n) in c.source_labels.iter().enumerate() {
                if i > 0 {
                    v.push_str(&c.separator);
                }
                v.push_str(b.get(n).unwrap_or(""));
            }
            v
        }
    };
    match c.action {
        Action::Drop => {
            if c.regex.is_match(&val) {
                return false;
            }
        }
        Action::Keep => {
            if !c.regex.is_match(&val) {
                return false;
            }
        }
        Action::DropEqual => {
            if b.get(&c.target_label).unwrap_or("") == val {
                return false;
            }
        }
        Action::KeepEqual => {
            if b.get(&c.target_label).unwrap_or("") != val {
                return false;
            }
        }
        Action::Replace => {
            let Some(target) = c.regex.expand(&val, &c.target_label) else {
                return true;
            };
            if target.is_empty() {
                return true;
            }
            let res = c.regex.expand(&val, &c.replacement).unwrap_or_default();
            if res.is_empty() {
                b.del(&target);
            } else {
                b.set(&target, &res);
            }
        }
        Action::Lowercase => {
            b.set(&c.target_label, &val.to_lowercase());
        }
        Action::Uppercase => {
            b.set(&c.target_label, &val.to_uppercase());
        }
        Action::HashMod => {
            let d = md5::compute(val.as_bytes());
            let mut last = [0u8; 8];
            last.copy_from_slice(&d.0[8..]);
            let m = u64::from_be_bytes(last) % c.modulus.max(1);
            b.set(&c.target_label, &m.to_string());
        }
        Action::LabelMap => {
            let snapshot: Vec<(String, String)> = b
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            for (n, v) in snapshot {
                if let Some(new) = c.regex.expand(&n, &c.replacement) {
                    b.set(&new, &v);
                }
            }
        }
        Action::LabelDrop => {
            b.retain(|n, _| !c.regex.is_match(n));
        }
        Action::LabelKeep => {
            b.retain(|n, _| c.regex.is_match(n));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(p: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(p.iter().copied())
    }

    fn yaml(y: &str) -> Vec<RelabelConfig> {
        serde_yaml_ng::from_str(y).unwrap()
    }

    struct Case {
        name: &'static str,
        input: &'static [(&'static str, &'static str)],
        cfg: &'static str,
        want: Option<&'static [(&'static str, &'static str)]>,
    }

    /// One or more cases per action, from Prometheus' documented semantics.
    const CASES: &[Case] = &[
        Case {
            name: "replace with capture group",
            input: &[("a", "foo"), ("b", "bar")],
            cfg: "- source_labels: [a]\n  regex: 'f(.*)'\n  target_label: d\n  replacement: 'ch${1}-ch${1}'",
            want: Some(&[("a", "foo"), ("b", "bar"), ("d", "choo-choo")]),
        },
        Case {
            name: "replace joins source labels with separator",
            input: &[("a", "foo"), ("b", "bar")],
            cfg: "- source_labels: [a, b]\n  separator: '-'\n  regex: '(.*)'\n  target_label: c",
            want: Some(&[("a", "foo"), ("b", "bar"), ("c", "foo-bar")]),
        },
        Case {
            name: "replace without match leaves labels alone",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  regex: 'x(.*)'\n  target_label: a\n  replacement: bad",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "replace is anchored",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  regex: 'o'\n  target_label: b\n  replacement: hit",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "replace to empty deletes target",
            input: &[("a", "foo"), ("b", "x")],
            cfg: "- source_labels: [c]\n  target_label: b",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "replace with templated target label",
            input: &[("a", "some-name-value")],
            cfg: "- source_labels: [a]\n  regex: 'some-([^-]+)-([^,]+)'\n  target_label: '${1}'\n  replacement: '${2}'",
            want: Some(&[("a", "some-name-value"), ("name", "value")]),
        },
        Case {
            name: "replace static value (no source labels)",
            input: &[("a", "foo")],
            cfg: "- target_label: env\n  replacement: prod",
            want: Some(&[("a", "foo"), ("env", "prod")]),
        },
        Case {
            name: "keep keeps on match",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  regex: 'f.*'\n  action: keep",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "keep drops without match, missing label is empty",
            input: &[("a", "foo")],
            cfg: "- source_labels: [b]\n  regex: '.+'\n  action: keep",
            want: None,
        },
        Case {
            name: "drop drops on match",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  regex: 'f|foo'\n  action: drop",
            want: None,
        },
        Case {
            name: "drop is anchored",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  regex: 'f'\n  action: Drop",
            want: Some(&[("a", "foo")]),
        },
        Case {
            name: "keepequal keeps when target equals source",
            input: &[("a", "1"), ("b", "1")],
            cfg: "- source_labels: [a]\n  target_label: b\n  action: keepequal",
            want: Some(&[("a", "1"), ("b", "1")]),
        },
        Case {
            name: "keepequal drops when different",
            input: &[("a", "1"), ("b", "2")],
            cfg: "- source_labels: [a]\n  target_label: b\n  action: keepequal",
            want: None,
        },
        Case {
            name: "dropequal drops when equal",
            input: &[("a", "1"), ("b", "1")],
            cfg: "- source_labels: [a]\n  target_label: b\n  action: dropequal",
            want: None,
        },
        Case {
            name: "dropequal keeps when different",
            input: &[("a", "1"), ("b", "2")],
            cfg: "- source_labels: [a]\n  target_label: b\n  action: dropequal",
            want: Some(&[("a", "1"), ("b", "2")]),
        },
        Case {
            // md5("foo") = acbd18db4cc2f85cedef654fccc4a4d8; last 8 bytes big-endian mod 1000.
            name: "hashmod",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  modulus: 1000\n  target_label: h\n  action: hashmod",
            want: Some(&[("a", "foo"), ("h", "696")]),
        },
        Case {
            name: "labelmap copies matching names",
            input: &[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("__meta_other", "x"),
                ("a", "1"),
            ],
            cfg: "- regex: '__meta_kubernetes_pod_label_(.+)'\n  action: labelmap",
            want: Some(&[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("__meta_other", "x"),
                ("a", "1"),
                ("app", "web"),
            ]),
        },
        Case {
            name: "labelmap with replacement template",
            input: &[("foo", "bar")],
            cfg: "- regex: '(f)(.*)'\n  replacement: '${2}_${1}'\n  action: labelmap",
            want: Some(&[("foo", "bar"), ("oo_f", "bar")]),
        },
        Case {
            name: "labeldrop",
            input: &[("a", "1"), ("tmp_x", "2"), ("tmp_y", "3")],
            cfg: "- regex: 'tmp_.*'\n  action: labeldrop",
            want: Some(&[("a", "1")]),
        },
        Case {
            name: "labelkeep",
            input: &[("__name__", "m"), ("a", "1"), ("b", "2")],
            cfg: "- regex: '__name__|a'\n  action: labelkeep",
            want: Some(&[("__name__", "m"), ("a", "1")]),
        },
        Case {
            name: "lowercase",
            input: &[("a", "FoO"), ("b", "BaR")],
            cfg: "- source_labels: [a, b]\n  target_label: c\n  action: lowercase",
            want: Some(&[("a", "FoO"), ("b", "BaR"), ("c", "foo;bar")]),
        },
        Case {
            name: "uppercase",
            input: &[("a", "foo")],
            cfg: "- source_labels: [a]\n  target_label: a\n  action: uppercase",
            want: Some(&[("a", "FOO")]),
        },
        Case {
            name: "steps apply in order and see earlier results",
            input: &[("__address__", "host:9100")],
            cfg: "- source_labels: [__address__]\n  regex: '(.*):.*'\n  target_label: host\n- source_labels: [host]\n  regex: 'host'\n  action: keep",
            want: Some(&[("__address__", "host:9100"), ("host", "host")]),
        },
        Case {
            name: "labeldrop of everything drops the set",
            input: &[("a", "1")],
            cfg: "- regex: '.*'\n  action: labeldrop",
            want: None,
        },
    ];

    #[test]
    fn table() {
        for c in CASES {
            let cfgs = yaml(c.cfg);
            let got = process(&l(c.input), &cfgs);
            assert_eq!(got, c.want.map(l), "case {:?}", c.name);
        }
    }

    #[test]
    fn hashmod_matches_prometheus_formula() {
        // Independent check of the formula: last 8 digest bytes, big-endian, modulo.
        let d = md5::compute(b"foo");
        assert_eq!(format!("{d:x}"), "acbd18db4cc2f85cedef654fccc4a4d8");
        let v = u64::from_be_bytes([0xed, 0xef, 0x65, 0x4f, 0xcc, 0xc4, 0xa4, 0xd8]);
        assert_eq!(v % 1000, 696);
    }

    #[test]
    fn validation_errors() {
        let bad = [
            ("- action: hashmod\n  target_label: x", "non-zero modulus"),
            ("- action: replace", "requires 'target_label'"),
            ("- action: lowercase", "requires 'target_label'"),
            (
                "- action: keepequal\n  target_label: x\n  regex: a",
                "no other fields",
            ),
            (
                "- action: labeldrop\n  regex: a\n  source_labels: [x]",
                "only 'regex'",
            ),
            ("- action: bogus", "unknown relabel action"),
            ("- regex: '('\n  target_label: x", "invalid regex"),
            ("- action: ''", "cannot be empty"),
        ];
        for (y, want) in bad {
            let e = serde_yaml_ng::from_str::<Vec<RelabelConfig>>(y)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{y}: {e}");
        }
    }
}
