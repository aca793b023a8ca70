//! Label matchers: `=`, `!=`, `=~`, `!~`. Regexes are fully anchored and `.` matches newlines,
//! as in Prometheus 3 (`^(?s:<re>)$`).

use std::fmt;

use regex::Regex;

/// The kind of a [`Matcher`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatchType {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::Equal => "=",
            MatchType::NotEqual => "!=",
            MatchType::Regex => "=~",
            MatchType::NotRegex => "!~",
        }
    }
}

/// Error building a [`Matcher`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid regular expression {pattern:?} for label {name:?}: {reason}")]
pub struct MatcherError {
    pub name: String,
    pub pattern: String,
    pub reason: String,
}

/// What a regex matcher reduces to, found once at construction to skip the regex engine.
#[derive(Debug, Clone)]
enum Fast {
    /// No shortcut: run the regex.
    None,
    /// `.*`: matches everything, also "".
    Any,
    /// `.+`: matches every non-empty value.
    NonEmpty,
    /// A plain literal (or alternation of literals `a|b|c`): set membership.
    Literals(Vec<String>),
}

/// A label matcher.
#[derive(Clone)]
pub struct Matcher {
    pub name: String,
    pub value: String,
    pub kind: MatchType,
    re: Option<Regex>,
    fast: Fast,
}

const MAX_REGEX_SIZE: usize = 1 << 20;

fn literal_alternatives(pattern: &str) -> Option<Vec<String>> {
    let meta = |c: char| "\\.+*?()|[]{}^$".contains(c);
    let mut out = Vec::new();
    for alt in pattern.split('|') {
        if alt.chars().any(meta) {
            return None;
        }
        out.push(alt.to_string());
    }
    Some(out)
}

impl Matcher {
    /// Builds a matcher; regexes are compiled (anchored) here, errors name the label.
    pub fn new(
        kind: MatchType,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<Matcher, MatcherError> {
        let name = name.into();
        let value = value.into();
        let (re, fast) = match kind {
            MatchType::Equal | MatchType::NotEqual => (None, Fast::None),
            MatchType::Regex | MatchType::NotRegex => {
                let fast = match value.as_str() {
                    ".*" => Fast::Any,
                    ".+" => Fast::NonEmpty,
                    v => literal_alternatives(v).map_or(Fast::None, Fast::Literals),
                };
                let re = regex::RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(MAX_REGEX_SIZE * 10)
                    .dfa_size_limit(MAX_REGEX_SIZE * 10)
                    .build()
                    .map_err(|e| MatcherError {
                        name: name.clone(),
                        pattern: value.clone(),
                        reason: e.to_string(),
                    })?;
                (Some(re), fast)
            }
        };
        Ok(Matcher {
            name,
            value,
            kind,
            re,
            fast,
        })
    }

    /// `name="value"`; never fails.
    pub fn equal(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            kind: MatchType::Equal,
            re: None,
            fast: Fast::None,
        }
    }

    /// `name!="value"`; never fails.
    pub fn not_equal(name: impl Into<String>, value: impl Into<String>) -> Matcher {
        Matcher {
            name: name.into(),
            value: value.into(),
            kind: MatchType::NotEqual,
            re: None,
            fast: Fast::None,
        }
    }

    /// Does `value` (the series' value of this label, `""` when absent) match?
    #[inline]
    pub fn matches(&self, value: &str) -> bool {
        match self.kind {
            MatchType::Equal => value == self.value,
            MatchType::NotEqual => value != self.value,
            MatchType::Regex => self.re_matches(value),
            MatchType::NotRegex => !self.re_matches(value),
        }
    }

    #[inline]
    fn re_matches(&self, value: &str) -> bool {
        match &self.fast {
            Fast::Any => true,
            Fast::NonEmpty => !value.is_empty(),
            Fast::Literals(set) => set.iter().any(|s| s == value),
            Fast::None => self.re.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    /// True when the matcher matches the empty string, i.e. also series *without* the label.
    pub fn matches_empty(&self) -> bool {
        self.matches("")
    }

    /// For `=~` over a set of literals (`a|b|c`) or `=`: the exact values that match.
    pub fn set_matches(&self) -> Option<Vec<&str>> {
        match (self.kind, &self.fast) {
            (MatchType::Equal, _) => Some(vec![self.value.as_str()]),
            (MatchType::Regex, Fast::Literals(set)) => {
                Some(set.iter().map(String::as_str).collect())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        f.write_str(self.kind.as_str())?;
        crate::labels::write_quoted(f, &self.value)
    }
}

impl fmt::Debug for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.name == other.name && self.value == other.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kind: MatchType, v: &str) -> Matcher {
        Matcher::new(kind, "l", v).unwrap()
    }

    #[test]
    fn anchored_regex() {
        assert!(m(MatchType::Regex, "foo").matches("foo"));
        assert!(!m(MatchType::Regex, "foo").matches("foobar"));
        assert!(!m(MatchType::Regex, "o").matches("foo"));
        assert!(m(MatchType::Regex, "f.*").matches("foo"));
        assert!(m(MatchType::Regex, "a|b").matches("b"));
        assert!(!m(MatchType::Regex, "a|b").matches("ab"));
        assert!(
            m(MatchType::Regex, "a.b").matches("a\nb"),
            "dot matches newline in Prometheus 3"
        );
        assert!(m(MatchType::NotRegex, "a.+").matches("b"));
        assert!(m(MatchType::Regex, ".*").matches(""));
        assert!(!m(MatchType::Regex, ".+").matches(""));
        assert!(m(MatchType::Regex, "").matches_empty());
        assert!(m(MatchType::Regex, "x(y|z)").matches("xz"));
    }

    #[test]
    fn bad_regex_names_the_label() {
        let e = Matcher::new(MatchType::Regex, "job", "(").unwrap_err();
        assert!(e.to_string().contains("job"), "{e}");
    }

    #[test]
    fn display() {
        assert_eq!(m(MatchType::NotRegex, "a\"").to_string(), r#"l!~"a\"""#);
    }
}
