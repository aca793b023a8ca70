//! Exposition-format parsers: the Prometheus text format 0.0.4 (and its 1.0.0 form with quoted
//! UTF-8 names) and OpenMetrics 1.0 text.
//!
//! Two levels:
//! - [`Parser`] is the hot-path, allocation-free streaming parser the scraper uses: it yields an
//!   [`EntryKind`] per line and exposes the current line through accessors. The raw series text
//!   ([`Parser::series`]) is the scrape cache key, so known series never build a [`Labels`].
//! - [`parse`] is the convenient owned iterator of [`Entry`] for importers (`/api/v1/import`,
//!   `tidemark tsdb import`).
//!
//! Input is untrusted: every malformed input is a [`ParseError`] naming the line, the byte offset
//! and what was expected; nothing panics (fuzzed, see `fuzz/` and `tests/parse_fuzz.rs`).

use std::borrow::Cow;

use tidemark_model::{Exemplar, Labels, METRIC_NAME, MetricType};

/// Which exposition format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Prometheus text format 0.0.4 (also accepts the 1.0.0 quoted-name syntax).
    PrometheusText,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl Format {
    /// The format for an HTTP `Content-Type`. `application/openmetrics-text` is OpenMetrics;
    /// everything else (including blank or unknown types) is read as the Prometheus text format,
    /// as Prometheus 2.x does.
    pub fn from_content_type(content_type: &str) -> Format {
        let media = content_type.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }
}

/// A malformed exposition body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} (byte {offset}): {msg}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset in the body.
    pub offset: usize,
    pub msg: String,
}

/// The kind of the entry the parser stopped at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Sample,
    Help,
    Type,
    Unit,
}

#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: usize,
    end: usize,
    /// Contains a backslash: needs unescaping.
    escaped: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct LabelSpan {
    name: Span,
    value: Span,
}

/// Streaming parser over one exposition body. Call [`Parser::next_entry`] until `None`; after an
/// error it returns `None`.
#[derive(Debug)]
pub struct Parser<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    line_start: usize,
    format: Format,
    done: bool,
    // Current sample.
    series: Span,
    name: Span,
    labels: Vec<LabelSpan>,
    /// Position after the `{` of a label set not yet tokenized (see [`Parser::labels`]).
    lazy_labels: Option<usize>,
    /// Line of the current entry.
    entry_line: usize,
    value: f64,
    ts: Option<i64>,
    has_exemplar: bool,
    ex_labels: Vec<LabelSpan>,
    ex_value: f64,
    ex_ts: Option<i64>,
    // Current metadata line.
    meta_name: Span,
    meta_text: Span,
    meta_type: MetricType,
}

/// Byte classes: bit 0 = metric name char, bit 1 = label name char.
const CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let alnum = c.is_ascii_alphanumeric() || c == b'_';
        if alnum || c == b':' {
            t[i] |= 1;
        }
        if alnum {
            t[i] |= 2;
        }
        i += 1;
    }
    t
};

#[inline]
fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

#[inline]
fn is_name_char(b: u8) -> bool {
    CLASS[b as usize] & 1 != 0
}

#[inline]
fn is_label_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_'
}

#[inline]
fn is_label_char(b: u8) -> bool {
    CLASS[b as usize] & 2 != 0
}

fn describe(b: Option<u8>) -> String {
    match b {
        None => "end of input".to_string(),
        Some(b'\n') => "end of line".to_string(),
        Some(c) if c.is_ascii_graphic() || c == b' ' => format!("{:?}", c as char),
        Some(c) => format!("byte {c:#04x}"),
    }
}

impl<'a> Parser<'a> {
    /// A parser over `body`. Fails if the body is not valid UTF-8 (the error names the line).
    pub fn new(body: &'a [u8], format: Format) -> Result<Parser<'a>, ParseError> {
        let text = match std::str::from_utf8(body) {
            Ok(t) => t,
            Err(e) => {
                let off = e.valid_up_to();
                let line = body[..off].iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(ParseError {
                    line,
                    offset: off,
                    msg: "invalid UTF-8".to_string(),
                });
            }
        };
        Ok(Parser {
            text,
            pos: 0,
            line: 1,
            line_start: 0,
            format,
            done: false,
            series: Span::default(),
            name: Span::default(),
            labels: Vec::with_capacity(16),
            lazy_labels: None,
            entry_line: 1,
            value: 0.0,
            ts: None,
            has_exemplar: false,
            ex_labels: Vec::new(),
            ex_value: 0.0,
            ex_ts: None,
            meta_name: Span::default(),
            meta_text: Span::default(),
            meta_type: MetricType::Unknown,
        })
    }

    /// The format being parsed.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Advances to the next sample or metadata line.
    pub fn next_entry(&mut self) -> Option<Result<EntryKind, ParseError>> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(k)) => Some(Ok(k)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.pos).copied()
    }

    fn err(&self, msg: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            offset: self.pos,
            msg: msg.into(),
        }
    }

    fn expected(&self, what: &str) -> ParseError {
        self.err(format!("expected {what}, found {}", describe(self.peek())))
    }

    #[inline]
    fn skip_blank(&mut self) {
        let b = self.bytes();
        while self.pos < b.len() && (b[self.pos] == b' ' || b[self.pos] == b'\t') {
            self.pos += 1;
        }
    }

    /// Consumes the end of the current line (`\n` or end of input).
    fn end_line(&mut self) -> Result<(), ParseError> {
        self.skip_blank();
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
                self.line_start = self.pos;
                Ok(())
            }
            _ => Err(self.expected("end of line")),
        }
    }

    fn skip_line(&mut self) {
        let b = self.bytes();
        while self.pos < b.len() && b[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos < b.len() {
            self.pos += 1;
            self.line += 1;
            self.line_start = self.pos;
        }
    }

    fn advance(&mut self) -> Result<Option<EntryKind>, ParseError> {
        let om = self.format == Format::OpenMetrics;
        loop {
            let Some(c) = self.peek() else {
                if om {
                    return Err(self.err("data does not end with # EOF"));
                }
                return Ok(None);
            };
            match c {
                b'\n' => {
                    if om {
                        return Err(self.err("unexpected empty line"));
                    }
                    self.skip_line();
                }
                b' ' | b'\t' if !om => {
                    self.skip_blank();
                    if self.peek().is_some_and(|c| c != b'\n' && c != b'#') {
                        // Indented sample line.
                        return self.sample().map(Some);
                    }
                }
                b'#' => {
                    if let Some(k) = self.comment()? {
                        return Ok(Some(k));
                    }
                    if self.done {
                        return Ok(None);
                    }
                }
                _ => return self.sample().map(Some),
            }
        }
    }

    /// A `#` line. Returns `None` for a plain comment (text format) and at `# EOF`.
    fn comment(&mut self) -> Result<Option<EntryKind>, ParseError> {
        let om = self.format == Format::OpenMetrics;
        let start = self.pos;
        self.entry_line = self.line;
        self.pos += 1; // '#'
        let rest = &self.bytes()[self.pos..];
        let kw = if rest.starts_with(b" HELP ") {
            Some((EntryKind::Help, 6))
        } else if rest.starts_with(b" TYPE ") {
            Some((EntryKind::Type, 6))
        } else if rest.starts_with(b" UNIT ") && om {
            Some((EntryKind::Unit, 6))
        } else {
            None
        };
        let Some((kind, n)) = kw else {
            if om {
                if rest == b" EOF" || rest == b" EOF\n" {
                    self.pos = self.bytes().len();
                    self.done = true;
                    return Ok(None);
                }
                if rest.starts_with(b" EOF\n") {
                    self.pos += 5;
                    return Err(self.err("unexpected data after # EOF"));
                }
                self.pos = start;
                return Err(self.err("expected \"# HELP\", \"# TYPE\", \"# UNIT\" or \"# EOF\""));
            }
            self.skip_line();
            return Ok(None);
        };
        self.pos += n;
        if !om {
            self.skip_blank();
        }
        self.meta_name = self.metric_name_token()?;
        let b = self.bytes();
        match self.peek() {
            Some(b' ') | Some(b'\t') => {
                self.pos += 1;
                if !om {
                    self.skip_blank();
                }
            }
            None | Some(b'\n') => {}
            _ => return Err(self.expected("a space after the metric name")),
        }
        let tstart = self.pos;
        let mut escaped = false;
        while self.pos < b.len() && b[self.pos] != b'\n' {
            escaped |= b[self.pos] == b'\\';
            self.pos += 1;
        }
        let mut tend = self.pos;
        if kind != EntryKind::Help {
            while tend > tstart && (b[tend - 1] == b' ' || b[tend - 1] == b'\t') {
                tend -= 1;
            }
        }
        self.meta_text = Span {
            start: tstart,
            end: tend,
            escaped,
        };
        if kind == EntryKind::Type {
            let t = &self.text[tstart..tend];
            self.meta_type = match (t, om) {
                ("untyped", false) => MetricType::Unknown,
                ("unknown", true) => MetricType::Unknown,
                ("counter" | "gauge" | "histogram" | "summary", _) => MetricType::parse(t),
                ("gaugehistogram" | "stateset" | "info", true) => MetricType::parse(t),
                _ => {
                    self.pos = tstart;
                    return Err(self.err(format!("invalid metric type {t:?}")));
                }
            };
        }
        self.end_line()?;
        Ok(Some(kind))
    }

    /// A metric name: bare (`[a-zA-Z_:][a-zA-Z0-9_:]*`) or quoted.
    fn metric_name_token(&mut self) -> Result<Span, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(c) if is_name_start(c) => {
                let start = self.pos;
                let b = self.bytes();
                self.pos += 1;
                while self.pos < b.len() && is_name_char(b[self.pos]) {
                    self.pos += 1;
                }
                Ok(Span {
                    start,
                    end: self.pos,
                    escaped: false,
                })
            }
            _ => Err(self.expected("a metric name")),
        }
    }

    /// A double-quoted string; the span excludes the quotes.
    #[inline]
    fn quoted(&mut self) -> Result<Span, ParseError> {
        let b = self.bytes();
        self.pos += 1; // opening quote
        let start = self.pos;
        let mut escaped = false;
        loop {
            match b.get(self.pos) {
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    if matches!(b.get(self.pos), Some(b'\n') | None) {
                        return Err(self.expected("an escaped character"));
                    }
                    self.pos += 1;
                }
                Some(b'\n') | None => return Err(self.expected("a closing '\"'")),
                Some(_) => self.pos += 1,
            }
        }
        let end = self.pos;
        self.pos += 1;
        Ok(Span {
            start,
            end,
            escaped,
        })
    }

    fn label_name(&mut self) -> Result<Span, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(c) if is_label_start(c) => {
                let start = self.pos;
                let b = self.bytes();
                self.pos += 1;
                while self.pos < b.len() && is_label_char(b[self.pos]) {
                    self.pos += 1;
                }
                Ok(Span {
                    start,
                    end: self.pos,
                    escaped: false,
                })
            }
            _ => Err(self.expected("a label name")),
        }
    }

    /// Parses `{...}` after the opening brace (consumed). `name_allowed`: a quoted metric name
    /// may come first. Fills `out`; returns the metric name span if one was inside.
    fn label_set(
        &mut self,
        exemplar: bool,
        name_allowed: bool,
    ) -> Result<Option<Span>, ParseError> {
        let mut name = None;
        let mut first = true;
        loop {
            self.skip_blank();
            if self.peek() == Some(b'}') {
                self.pos += 1;
                return Ok(name);
            }
            let ln = self.label_name()?;
            self.skip_blank();
            if first
                && name_allowed
                && self.bytes()[ln.start - 1] == b'"'
                && matches!(self.peek(), Some(b',' | b'}'))
            {
                // `{"metric.name", ...}`
                name = Some(ln);
            } else {
                if self.peek() != Some(b'=') {
                    return Err(self.expected("'=' after a label name"));
                }
                self.pos += 1;
                self.skip_blank();
                if self.peek() != Some(b'"') {
                    return Err(self.expected("a quoted label value"));
                }
                let v = self.quoted()?;
                let l = LabelSpan { name: ln, value: v };
                if exemplar {
                    self.ex_labels.push(l);
                } else {
                    self.labels.push(l);
                }
                self.skip_blank();
            }
            first = false;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {}
                _ => return Err(self.expected("',' or '}' in a label set")),
            }
        }
    }

    /// The next whitespace-delimited token.
    #[inline]
    fn token(&mut self) -> &'a str {
        let b = self.bytes();
        let start = self.pos;
        while self.pos < b.len() && !matches!(b[self.pos], b' ' | b'\t' | b'\n') {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn float(&mut self, what: &str) -> Result<f64, ParseError> {
        let start = self.pos;
        let t = self.token();
        match parse_float(t) {
            Some(v) => Ok(v),
            None => {
                self.pos = start;
                Err(self.err(format!("expected {what}, found {t:?}")))
            }
        }
    }

    /// A timestamp: integer milliseconds (text format) or float seconds (OpenMetrics).
    fn timestamp(&mut self) -> Result<i64, ParseError> {
        let start = self.pos;
        let t = self.token();
        if self.format == Format::OpenMetrics {
            match parse_float(t) {
                Some(s) if s.is_finite() && s.abs() < 9.0e15 => Ok((s * 1000.0).round() as i64),
                _ => {
                    self.pos = start;
                    Err(self.err(format!("expected a timestamp in seconds, found {t:?}")))
                }
            }
        } else {
            t.parse::<i64>().map_err(|_| {
                self.pos = start;
                self.err(format!("expected a timestamp in milliseconds, found {t:?}"))
            })
        }
    }

    /// Skips a `{...}` label set (after the `{`) honouring quotes and escapes, without
    /// tokenizing it: the hot path only needs the series text as a cache key.
    fn skip_label_set(&mut self) -> Result<(), ParseError> {
        let b = self.bytes();
        let mut in_q = false;
        while let Some(&c) = b.get(self.pos) {
            match c {
                b'\n' => break,
                b'"' => in_q = !in_q,
                b'\\' if in_q => {
                    if b.get(self.pos + 1) == Some(&b'\n') {
                        self.pos += 1;
                        break;
                    }
                    self.pos += 1;
                }
                b'}' if !in_q => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => {}
            }
            self.pos += 1;
        }
        if in_q {
            Err(self.expected("a closing '\"'"))
        } else {
            Err(self.expected("',' or '}' in a label set"))
        }
    }

    fn sample(&mut self) -> Result<EntryKind, ParseError> {
        self.entry_line = self.line;
        self.labels.clear();
        self.lazy_labels = None;
        self.has_exemplar = false;
        self.ts = None;
        let start = self.pos;
        if self.peek() == Some(b'{') {
            self.pos += 1;
            match self.label_set(false, true)? {
                Some(n) => self.name = n,
                None => {
                    self.pos = start;
                    return Err(self.err("metric name missing"));
                }
            }
        } else {
            self.name = self.metric_name_token()?;
            if self.peek() == Some(b'{') {
                self.pos += 1;
                self.lazy_labels = Some(self.pos);
                self.skip_label_set()?;
            }
        }
        self.series = Span {
            start,
            end: self.pos,
            escaped: false,
        };
        match self.peek() {
            Some(b' ') | Some(b'\t') => self.skip_blank(),
            _ => return Err(self.expected("a space before the value")),
        }
        self.value = self.float("a sample value")?;
        self.skip_blank();
        match self.peek() {
            None | Some(b'\n') | Some(b'#') => {}
            Some(_) => self.ts = Some(self.timestamp()?),
        }
        self.skip_blank();
        if self.peek() == Some(b'#') {
            if self.format != Format::OpenMetrics {
                // Text format: a trailing comment is not allowed by the spec; Prometheus errors.
                return Err(self.expected("end of line"));
            }
            self.parse_exemplar()?;
        }
        self.end_line()?;
        Ok(EntryKind::Sample)
    }

    fn parse_exemplar(&mut self) -> Result<(), ParseError> {
        self.pos += 1; // '#'
        self.skip_blank();
        if self.peek() != Some(b'{') {
            return Err(self.expected("'{' starting an exemplar label set"));
        }
        self.pos += 1;
        self.ex_labels.clear();
        self.label_set(true, false)?;
        self.skip_blank();
        self.ex_value = self.float("an exemplar value")?;
        self.skip_blank();
        self.ex_ts = match self.peek() {
            None | Some(b'\n') => None,
            Some(_) => Some(self.timestamp()?),
        };
        self.has_exemplar = true;
        Ok(())
    }

    fn span_str(&self, s: Span) -> Cow<'a, str> {
        let raw = &self.text[s.start..s.end];
        if s.escaped {
            unescape(raw)
        } else {
            Cow::Borrowed(raw)
        }
    }

    // ----- accessors for the current sample -----

    /// The raw series text of the current sample (`name{labels}` exactly as written): the
    /// scrape cache key.
    #[inline]
    pub fn series(&self) -> &'a str {
        &self.text[self.series.start..self.series.end]
    }

    /// The metric name of the current sample.
    pub fn metric_name(&self) -> Cow<'a, str> {
        self.span_str(self.name)
    }

    #[inline]
    pub fn value(&self) -> f64 {
        self.value
    }

    /// The sample's own timestamp in milliseconds, if it carried one.
    #[inline]
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.ts
    }

    /// Line number of the current entry.
    pub fn entry_line(&self) -> usize {
        self.entry_line
    }

    fn build_labels(&self, name: Option<Span>, spans: &[LabelSpan]) -> Result<Labels, ParseError> {
        let mut pairs: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(spans.len() + 1);
        if let Some(n) = name {
            pairs.push((Cow::Borrowed(METRIC_NAME), self.span_str(n)));
        }
        for l in spans {
            let v = self.span_str(l.value);
            let n = self.span_str(l.name);
            if n.is_empty() {
                return Err(ParseError {
                    line: self.entry_line(),
                    offset: l.name.start,
                    msg: "empty label name".into(),
                });
            }
            pairs.push((n, v));
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for w in pairs.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(ParseError {
                    line: self.entry_line(),
                    offset: self.series.start,
                    msg: format!("duplicate label name {:?} in {}", w[0].0, self.series()),
                });
            }
        }
        Ok(Labels::from_sorted(
            pairs
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| (n.as_ref(), v.as_ref())),
        ))
    }

    /// The label set of the current sample (`__name__` included). Labels with empty values are
    /// dropped; duplicate label names are an error.
    pub fn labels(&self) -> Result<Labels, ParseError> {
        let Some(open) = self.lazy_labels else {
            return self.build_labels(Some(self.name), &self.labels);
        };
        // Tokenize the label set now (cache misses only), with a parser positioned inside it.
        let mut sub = Parser {
            text: self.text,
            pos: open,
            line: self.entry_line,
            line_start: self.line_start,
            format: self.format,
            done: false,
            series: self.series,
            name: self.name,
            labels: Vec::with_capacity(8),
            lazy_labels: None,
            entry_line: self.entry_line,
            value: 0.0,
            ts: None,
            has_exemplar: false,
            ex_labels: Vec::new(),
            ex_value: 0.0,
            ex_ts: None,
            meta_name: Span::default(),
            meta_text: Span::default(),
            meta_type: MetricType::Unknown,
        };
        sub.label_set(false, false)?;
        sub.build_labels(Some(self.name), &sub.labels)
    }

    /// The exemplar of the current sample (OpenMetrics only).
    pub fn exemplar(&self) -> Option<Result<Exemplar, ParseError>> {
        if !self.has_exemplar {
            return None;
        }
        Some(
            self.build_labels(None, &self.ex_labels)
                .map(|labels| Exemplar {
                    labels,
                    value: self.ex_value,
                    ts: self.ex_ts,
                }),
        )
    }

    // ----- accessors for the current metadata line -----

    /// The metric family name of the current HELP/TYPE/UNIT line.
    pub fn meta_metric(&self) -> Cow<'a, str> {
        self.span_str(self.meta_name)
    }

    /// The text of the current HELP or UNIT line (unescaped).
    pub fn meta_text(&self) -> Cow<'a, str> {
        let raw = &self.text[self.meta_text.start..self.meta_text.end];
        if !self.meta_text.escaped {
            return Cow::Borrowed(raw);
        }
        if self.format == Format::OpenMetrics {
            unescape(raw)
        } else {
            unescape_help_text(raw)
        }
    }

    /// The type of the current TYPE line.
    pub fn meta_type(&self) -> MetricType {
        self.meta_type
    }
}

/// Parses a float as Go's `strconv.ParseFloat` does for exposition values (decimal, `NaN`,
/// `Inf`/`+Inf`/`-Inf` in any case).
#[inline]
pub(crate) fn parse_float(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    // Rust accepts "inf"/"infinity"/"nan" case-insensitively like Go; reject what Go rejects
    // that Rust would accept (nothing relevant) and the empty token.
    if b.is_empty() {
        return None;
    }
    s.parse::<f64>().ok()
}

/// Unescapes `\\`, `\"` and `\n`; other escapes are kept verbatim (as Prometheus does).
fn unescape(s: &str) -> Cow<'_, str> {
    unescape_with(s, true)
}

/// HELP text of the text format: only `\\` and `\n` are escapes.
fn unescape_help_text(s: &str) -> Cow<'_, str> {
    unescape_with(s, false)
}

fn unescape_with(s: &str, quote: bool) -> Cow<'_, str> {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('\\') => out.push('\\'),
            Some('"') if quote => out.push('"'),
            Some('n') => out.push('\n'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// One owned entry of an exposition body (see [`parse`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Sample {
        labels: Labels,
        /// The sample's timestamp, or the default one when it had none.
        t: i64,
        /// Whether the body carried the timestamp.
        timestamped: bool,
        v: f64,
        exemplar: Option<Exemplar>,
    },
    Help {
        metric: String,
        help: String,
    },
    Type {
        metric: String,
        kind: MetricType,
    },
    Unit {
        metric: String,
        unit: String,
    },
}

/// Owned iterator over an exposition body; see [`parse`].
#[derive(Debug)]
pub struct Entries<'a> {
    parser: Option<Parser<'a>>,
    init_err: Option<ParseError>,
    default_ts_ms: i64,
}

impl Iterator for Entries<'_> {
    type Item = Result<Entry, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.init_err.take() {
            return Some(Err(e));
        }
        let p = self.parser.as_mut()?;
        let kind = match p.next_entry()? {
            Ok(k) => k,
            Err(e) => return Some(Err(e)),
        };
        let entry = match kind {
            EntryKind::Sample => {
                let labels = match p.labels() {
                    Ok(l) => l,
                    Err(e) => {
                        self.parser = None;
                        return Some(Err(e));
                    }
                };
                let exemplar = match p.exemplar() {
                    None => None,
                    Some(Ok(e)) => Some(e),
                    Some(Err(e)) => {
                        self.parser = None;
                        return Some(Err(e));
                    }
                };
                Entry::Sample {
                    labels,
                    t: p.timestamp_ms().unwrap_or(self.default_ts_ms),
                    timestamped: p.timestamp_ms().is_some(),
                    v: p.value(),
                    exemplar,
                }
            }
            EntryKind::Help => Entry::Help {
                metric: p.meta_metric().into_owned(),
                help: p.meta_text().into_owned(),
            },
            EntryKind::Type => Entry::Type {
                metric: p.meta_metric().into_owned(),
                kind: p.meta_type(),
            },
            EntryKind::Unit => Entry::Unit {
                metric: p.meta_metric().into_owned(),
                unit: p.meta_text().into_owned(),
            },
        };
        Some(Ok(entry))
    }
}

/// Parses an exposition body. `content_type` picks the format (see
/// [`Format::from_content_type`]); samples without a timestamp get `default_ts_ms`. The iterator
/// yields an error at the first malformed line and then stops.
pub fn parse<'a>(body: &'a [u8], content_type: &str, default_ts_ms: i64) -> Entries<'a> {
    parse_format(body, Format::from_content_type(content_type), default_ts_ms)
}

/// Like [`parse`] with an explicit format.
pub fn parse_format(body: &[u8], format: Format, default_ts_ms: i64) -> Entries<'_> {
    match Parser::new(body, format) {
        Ok(p) => Entries {
            parser: Some(p),
            init_err: None,
            default_ts_ms,
        },
        Err(e) => Entries {
            parser: None,
            init_err: Some(e),
            default_ts_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(body: &str, f: Format) -> Result<Vec<Entry>, ParseError> {
        parse_format(body.as_bytes(), f, 1000).collect()
    }

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn text_format_basics() {
        let body = "# HELP http_requests_total The total \\\\ number\\n of \"requests\".\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"post\",code=\"200\"} 1027 1395066363000\n\
                    http_requests_total{method=\"post\",code=\"400\",}    3   1395066363000\n\
                    \n\
                    # A normal comment.\n\
                    msdos_file_access_time_seconds{path=\"C:\\\\DIR\\\\FILE.TXT\",error=\"Cannot find file:\\n\\\"FILE.TXT\\\"\"} 1.458255915e9\n\
                    metric_without_timestamp_and_labels 12.47\n\
                    something_weird{problem=\"division by zero\"} +Inf -3982045\n\
                    nan_metric NaN\n\
                    neg -Inf\n\
                    \tindented 1";
        let got = all(body, Format::PrometheusText).unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(
            got[0],
            Entry::Help {
                metric: "http_requests_total".into(),
                help: "The total \\ number\n of \"requests\".".into()
            }
        );
        assert_eq!(
            got[1],
            Entry::Type {
                metric: "http_requests_total".into(),
                kind: MetricType::Counter
            }
        );
        assert_eq!(
            got[2],
            Entry::Sample {
                labels: l(&[
                    ("__name__", "http_requests_total"),
                    ("method", "post"),
                    ("code", "200")
                ]),
                t: 1395066363000,
                timestamped: true,
                v: 1027.0,
                exemplar: None
            }
        );
        let Entry::Sample { labels, v, .. } = &got[4] else {
            panic!()
        };
        assert_eq!(labels.get("path"), Some("C:\\DIR\\FILE.TXT"));
        assert_eq!(labels.get("error"), Some("Cannot find file:\n\"FILE.TXT\""));
        assert_eq!(*v, 1.458255915e9);
        let Entry::Sample { t, timestamped, .. } = &got[5] else {
            panic!()
        };
        assert_eq!((*t, *timestamped), (1000, false));
        let Entry::Sample { v, t, .. } = &got[6] else {
            panic!()
        };
        assert_eq!((*v, *t), (f64::INFINITY, -3982045));
        let Entry::Sample { v, .. } = &got[7] else {
            panic!()
        };
        assert!(v.is_nan());
        let Entry::Sample { v, .. } = &got[8] else {
            panic!()
        };
        assert_eq!(*v, f64::NEG_INFINITY);
    }

    #[test]
    fn openmetrics_basics() {
        let body = "# TYPE foo counter\n# UNIT foo seconds\n# HELP foo Help \\\"q\\\"\n\
                    foo_total{a=\"1\"} 17.0 1520879607.789 # {trace_id=\"oHg5SJYRHA0\"} 9.8 1520879607.789\n\
                    foo_created{a=\"1\"} 1520872607.123\n\
                    # TYPE s stateset\n\
                    s{s=\"a\"} 1\n\
                    # EOF\n";
        let got = all(body, Format::OpenMetrics).unwrap();
        assert_eq!(
            got[1],
            Entry::Unit {
                metric: "foo".into(),
                unit: "seconds".into()
            }
        );
        assert_eq!(
            got[2],
            Entry::Help {
                metric: "foo".into(),
                help: "Help \"q\"".into()
            }
        );
        let Entry::Sample {
            labels,
            t,
            v,
            exemplar,
            ..
        } = &got[3]
        else {
            panic!()
        };
        assert_eq!(labels, &l(&[("__name__", "foo_total"), ("a", "1")]));
        assert_eq!((*t, *v), (1520879607789, 17.0));
        let ex = exemplar.as_ref().unwrap();
        assert_eq!(ex.labels, l(&[("trace_id", "oHg5SJYRHA0")]));
        assert_eq!((ex.value, ex.ts), (9.8, Some(1520879607789)));
        assert_eq!(
            got[5],
            Entry::Type {
                metric: "s".into(),
                kind: MetricType::StateSet
            }
        );
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn openmetrics_requires_eof() {
        let e = all("foo 1\n", Format::OpenMetrics).unwrap_err();
        assert!(e.msg.contains("# EOF"), "{e}");
        let e = all("foo 1\n# EOF\nbar 1\n", Format::OpenMetrics).unwrap_err();
        assert!(e.msg.contains("after # EOF"), "{e}");
        let e = all("foo 1\n\n# EOF\n", Format::OpenMetrics).unwrap_err();
        assert!(e.msg.contains("empty line"), "{e}");
        let e = all("# random comment\n# EOF\n", Format::OpenMetrics).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(all("# EOF", Format::OpenMetrics).unwrap().is_empty());
    }

    #[test]
    fn quoted_utf8_names() {
        let got = all(
            "{\"my.metric\", \"label.x\"=\"v\", b=\"c\"} 1\n",
            Format::PrometheusText,
        )
        .unwrap();
        let Entry::Sample { labels, .. } = &got[0] else {
            panic!()
        };
        assert_eq!(
            labels,
            &l(&[("__name__", "my.metric"), ("label.x", "v"), ("b", "c")])
        );
        let got = all(
            "# HELP \"my.metric\" h\n# TYPE \"my.metric\" gauge\n",
            Format::PrometheusText,
        )
        .unwrap();
        assert_eq!(
            got[0],
            Entry::Help {
                metric: "my.metric".into(),
                help: "h".into()
            }
        );
    }

    #[test]
    fn errors_name_line_and_expectation() {
        let cases: &[(&str, usize, &str)] = &[
            ("ok 1\nbad{a=1} 2\n", 2, "quoted label value"),
            ("ok 1\nbad{a=\"1\" 2\n", 2, "',' or '}'"),
            ("bad 1x\n", 1, "sample value"),
            ("bad 1 12.5\n", 1, "timestamp in milliseconds"),
            ("bad\n", 1, "space before the value"),
            ("bad{a=\"1\",a=\"2\"} 1\n", 1, "duplicate label name"),
            ("# TYPE foo bogus\n", 1, "invalid metric type"),
            ("{a=\"b\"} 1\n", 1, "metric name missing"),
            ("9bad 1\n", 1, "metric name"),
            ("bad{a=\"1\n\"} 1\n", 1, "closing"),
            ("bad 1 2 3\n", 1, "end of line"),
        ];
        for (body, line, want) in cases {
            let e = all(body, Format::PrometheusText).unwrap_err();
            assert_eq!(e.line, *line, "{body:?}: {e}");
            assert!(e.msg.contains(want), "{body:?}: {e}");
        }
        let e = all("ok 1\nbad\u{0} 1\n", Format::PrometheusText).unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_format(b"ok 1\n\xff 1\n", Format::PrometheusText, 0)
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!((e.line, e.msg.as_str()), (2, "invalid UTF-8"));
    }

    #[test]
    fn content_type_negotiation() {
        assert_eq!(
            Format::from_content_type("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_content_type("text/plain; version=0.0.4"),
            Format::PrometheusText
        );
        assert_eq!(Format::from_content_type(""), Format::PrometheusText);
    }

    #[test]
    fn streaming_parser_exposes_raw_series() {
        let mut p = Parser::new(b"a{x=\"1\"} 1\nb 2 5\n", Format::PrometheusText).unwrap();
        assert_eq!(p.next_entry(), Some(Ok(EntryKind::Sample)));
        assert_eq!(p.series(), "a{x=\"1\"}");
        assert_eq!(p.metric_name(), "a");
        assert_eq!(p.next_entry(), Some(Ok(EntryKind::Sample)));
        assert_eq!(
            (p.series(), p.value(), p.timestamp_ms()),
            ("b", 2.0, Some(5))
        );
        assert_eq!(p.next_entry(), None);
    }
}
