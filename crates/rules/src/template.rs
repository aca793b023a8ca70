//! A subset of Go's `text/template`, enough for Prometheus alert labels and annotations:
//! `{{ $labels.x }}`, `{{ $value }}`, `{{ $externalLabels.x }}`, pipelines with `|`,
//! `if`/`else if`/`else`/`range`/`with`/`end`, variables (`$x := ...`), comments, trim markers
//! (`{{-`, `-}}`) and Prometheus' template functions (humanize*, printf, toUpper, query, first,
//! value, label, ...).
//!
//! Why our own evaluator: there is no maintained Rust crate that implements Go's template
//! language (Tera, Handlebars, minijinja use other syntaxes), and rule files written for
//! Prometheus must work unchanged. The subset is documented in docs/rules.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A template value.
#[derive(Debug, Clone, PartialEq)]
pub enum TVal {
    Nil,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Map(BTreeMap<String, TVal>),
    List(Vec<TVal>),
}

impl TVal {
    fn truthy(&self) -> bool {
        match self {
            TVal::Nil => false,
            TVal::Bool(b) => *b,
            TVal::Int(i) => *i != 0,
            TVal::Num(f) => *f != 0.0,
            TVal::Str(s) => !s.is_empty(),
            TVal::Map(m) => !m.is_empty(),
            TVal::List(l) => !l.is_empty(),
        }
    }

    /// Go's `%v` rendering.
    pub fn render(&self) -> String {
        match self {
            TVal::Nil => "<no value>".to_string(),
            TVal::Bool(b) => b.to_string(),
            TVal::Int(i) => i.to_string(),
            TVal::Num(f) => go_g(*f, None),
            TVal::Str(s) => s.clone(),
            TVal::Map(m) => {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}:{}", v.render()))
                    .collect();
                format!("map[{}]", parts.join(" "))
            }
            TVal::List(l) => {
                let parts: Vec<String> = l.iter().map(TVal::render).collect();
                format!("[{}]", parts.join(" "))
            }
        }
    }

    fn as_f64(&self) -> Result<f64, String> {
        match self {
            TVal::Int(i) => Ok(*i as f64),
            TVal::Num(f) => Ok(*f),
            TVal::Str(s) => {
                parse_go_float(s).ok_or_else(|| format!("can't convert {s:?} to float"))
            }
            other => Err(format!("can't convert {} to float", other.render())),
        }
    }

    /// A string map (labels) as a template map.
    pub fn from_labels<'a>(it: impl IntoIterator<Item = (&'a str, &'a str)>) -> TVal {
        TVal::Map(
            it.into_iter()
                .map(|(k, v)| (k.to_string(), TVal::Str(v.to_string())))
                .collect(),
        )
    }
}

fn parse_go_float(s: &str) -> Option<f64> {
    let t = s.trim();
    match t.to_ascii_lowercase().as_str() {
        "inf" | "+inf" => Some(f64::INFINITY),
        "-inf" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => t.parse().ok(),
    }
}

/// The samples a `query` call returns: labels and value.
pub type QueryResult = Result<Vec<(Vec<(String, String)>, f64)>, String>;

/// The function behind `query`.
pub type QueryFn<'a> = dyn Fn(&str) -> QueryResult + 'a;

/// What a template sees: `.Labels`/`$labels`, `.ExternalLabels`/`$externalLabels`,
/// `.ExternalURL`/`$externalURL`, `.Value`/`$value`, and a query function.
pub struct TemplateData<'a> {
    pub labels: TVal,
    pub external_labels: TVal,
    pub external_url: String,
    pub value: f64,
    pub query: Option<&'a QueryFn<'a>>,
}

impl std::fmt::Debug for TemplateData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateData")
            .field("labels", &self.labels)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone, PartialEq)]
enum Term {
    Dot,
    /// `.A.B` on the current value.
    Field(Vec<String>),
    /// `$x.A.B` (`$` alone is the root data).
    Var(String, Vec<String>),
    Str(String),
    Int(i64),
    Num(f64),
    Bool(bool),
    Nil,
    Ident(String),
    Sub(Box<Pipeline>, Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Pipeline {
    decl: Option<(String, bool)>,
    cmds: Vec<Vec<Term>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    Range(Pipeline, Option<(String, String)>, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Act(String),
}

fn split(src: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while let Some(i) = rest.find("{{") {
        let mut text = &rest[..i];
        if trim_next {
            text = text.trim_start();
        }
        let after = &rest[i + 2..];
        let trim_left =
            after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        if trim_left {
            text = text.trim_end();
        }
        if !text.is_empty() {
            out.push(Tok::Text(text.to_string()));
        }
        let body_start = if trim_left { &after[1..] } else { after };
        // Find the closing `}}` outside string literals.
        let bytes = body_start.as_bytes();
        let mut j = 0;
        let mut close = None;
        while j < bytes.len() {
            match bytes[j] {
                b'"' => {
                    j += 1;
                    while j < bytes.len() && bytes[j] != b'"' {
                        if bytes[j] == b'\\' {
                            j += 1;
                        }
                        j += 1;
                    }
                }
                b'`' => {
                    j += 1;
                    while j < bytes.len() && bytes[j] != b'`' {
                        j += 1;
                    }
                }
                b'}' if bytes.get(j + 1) == Some(&b'}') => {
                    close = Some(j);
                    break;
                }
                _ => {}
            }
            j += 1;
        }
        let Some(c) = close else {
            return Err("unclosed action".to_string());
        };
        let mut body = &body_start[..c];
        trim_next = false;
        if body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-") {
            body = &body[..body.len() - 1];
            trim_next = true;
        }
        let b = body.trim();
        if !(b.starts_with("/*") && b.ends_with("*/")) {
            out.push(Tok::Act(b.to_string()));
        }
        rest = &body_start[c + 2..];
    }
    let mut text = rest;
    if trim_next {
        text = text.trim_start();
    }
    if !text.is_empty() {
        out.push(Tok::Text(text.to_string()));
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
enum Lx {
    Dot,
    Field(String),
    Var(String),
    Str(String),
    Num(String),
    Ident(String),
    LParen,
    RParen,
    Pipe,
    Decl,
    Assign,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Lx>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let ident_char = |x: char| x.is_alphanumeric() || x == '_';
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '(' {
            out.push(Lx::LParen);
            i += 1;
        } else if ch == ')' {
            out.push(Lx::RParen);
            i += 1;
        } else if ch == '|' {
            out.push(Lx::Pipe);
            i += 1;
        } else if ch == ',' {
            out.push(Lx::Comma);
            i += 1;
        } else if ch == ':' && c.get(i + 1) == Some(&'=') {
            out.push(Lx::Decl);
            i += 2;
        } else if ch == '=' {
            out.push(Lx::Assign);
            i += 1;
        } else if ch == '.' {
            let st = i + 1;
            let mut j = st;
            while j < c.len() && ident_char(c[j]) {
                j += 1;
            }
            if j == st {
                out.push(Lx::Dot);
            } else {
                out.push(Lx::Field(c[st..j].iter().collect()));
            }
            i = j;
        } else if ch == '$' {
            let st = i + 1;
            let mut j = st;
            while j < c.len() && ident_char(c[j]) {
                j += 1;
            }
            out.push(Lx::Var(c[st..j].iter().collect()));
            i = j;
        } else if ch == '"' {
            let mut j = i + 1;
            let mut v = String::new();
            loop {
                let Some(&x) = c.get(j) else {
                    return Err("unterminated quoted string".into());
                };
                if x == '"' {
                    break;
                }
                if x == '\\' {
                    j += 1;
                    match c.get(j) {
                        Some('n') => v.push('\n'),
                        Some('t') => v.push('\t'),
                        Some('\\') => v.push('\\'),
                        Some('"') => v.push('"'),
                        Some(o) => {
                            v.push('\\');
                            v.push(*o)
                        }
                        None => return Err("unterminated quoted string".into()),
                    }
                } else {
                    v.push(x);
                }
                j += 1;
            }
            out.push(Lx::Str(v));
            i = j + 1;
        } else if ch == '`' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '`' {
                j += 1;
            }
            if j >= c.len() {
                return Err("unterminated raw quoted string".into());
            }
            out.push(Lx::Str(c[i + 1..j].iter().collect()));
            i = j + 1;
        } else if ch.is_ascii_digit()
            || ((ch == '-' || ch == '+') && c.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let mut j = i + 1;
            while j < c.len()
                && (c[j].is_ascii_alphanumeric()
                    || c[j] == '.'
                    || c[j] == '_'
                    || ((c[j] == '-' || c[j] == '+') && matches!(c[j - 1], 'e' | 'E')))
            {
                j += 1;
            }
            out.push(Lx::Num(c[i..j].iter().collect()));
            i = j;
        } else if ident_char(ch) {
            let mut j = i;
            while j < c.len() && ident_char(c[j]) {
                j += 1;
            }
            out.push(Lx::Ident(c[i..j].iter().collect()));
            i = j;
        } else {
            return Err(format!("unexpected {ch:?} in action"));
        }
    }
    Ok(out)
}

struct PP {
    toks: Vec<Lx>,
    pos: usize,
}

impl PP {
    fn peek(&self) -> Option<&Lx> {
        self.toks.get(self.pos)
    }

    fn fields(&mut self) -> Vec<String> {
        let mut f = Vec::new();
        while let Some(Lx::Field(n)) = self.peek() {
            f.push(n.clone());
            self.pos += 1;
        }
        f
    }

    fn pipeline(&mut self, allow_decl: bool) -> Result<Pipeline, String> {
        let mut decl = None;
        if allow_decl
            && let (Some(Lx::Var(v)), Some(op)) =
                (self.toks.get(self.pos), self.toks.get(self.pos + 1))
            && matches!(op, Lx::Decl | Lx::Assign)
        {
            decl = Some((v.clone(), *op == Lx::Decl));
            self.pos += 2;
        }
        let mut cmds = Vec::new();
        loop {
            let mut cmd = Vec::new();
            while let Some(t) = self.peek() {
                if matches!(t, Lx::Pipe | Lx::RParen) {
                    break;
                }
                cmd.push(self.term()?);
            }
            if cmd.is_empty() {
                return Err("missing command in pipeline".into());
            }
            cmds.push(cmd);
            if self.peek() == Some(&Lx::Pipe) {
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(Pipeline { decl, cmds })
    }

    fn term(&mut self) -> Result<Term, String> {
        let Some(t) = self.peek().cloned() else {
            return Err("unexpected end of action".into());
        };
        self.pos += 1;
        Ok(match t {
            Lx::Dot => Term::Dot,
            Lx::Field(f) => {
                let mut v = vec![f];
                v.extend(self.fields());
                Term::Field(v)
            }
            Lx::Var(v) => {
                let f = self.fields();
                Term::Var(v, f)
            }
            Lx::Str(s) => Term::Str(s),
            Lx::Num(n) => {
                if let Ok(i) = n.parse::<i64>() {
                    Term::Int(i)
                } else if let Ok(f) = n.parse::<f64>() {
                    Term::Num(f)
                } else {
                    return Err(format!("bad number syntax: {n:?}"));
                }
            }
            Lx::Ident(i) => match i.as_str() {
                "true" => Term::Bool(true),
                "false" => Term::Bool(false),
                "nil" => Term::Nil,
                _ if is_func(&i) => Term::Ident(i),
                _ => return Err(format!("function {i:?} not defined")),
            },
            Lx::LParen => {
                let p = self.pipeline(false)?;
                if self.peek() != Some(&Lx::RParen) {
                    return Err("unclosed left paren".into());
                }
                self.pos += 1;
                let f = self.fields();
                Term::Sub(Box::new(p), f)
            }
            other => return Err(format!("unexpected {other:?} in operand")),
        })
    }
}

fn parse_pipeline(s: &str, allow_decl: bool) -> Result<Pipeline, String> {
    let mut p = PP {
        toks: lex(s)?,
        pos: 0,
    };
    let pl = p.pipeline(allow_decl)?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?} in pipeline", p.toks[p.pos]));
    }
    Ok(pl)
}

const FUNCS: &[&str] = &[
    "and",
    "or",
    "not",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "len",
    "index",
    "print",
    "printf",
    "println",
    "html",
    "js",
    "urlquery",
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "toUpper",
    "toLower",
    "title",
    "query",
    "first",
    "value",
    "label",
    "strvalue",
    "sortByLabel",
    "reReplaceAll",
    "match",
    "safeHtml",
    "stripPort",
    "stripDomain",
    "args",
    "externalURL",
    "pathPrefix",
    "parseDuration",
    "toTime",
    "tmpl",
];

fn is_func(s: &str) -> bool {
    FUNCS.contains(&s)
}

enum Stop {
    End,
    Else(Option<String>),
    Eof,
}

fn parse_nodes(toks: &[Tok], pos: &mut usize) -> Result<(Vec<Node>, Stop), String> {
    let mut nodes = Vec::new();
    while *pos < toks.len() {
        let t = &toks[*pos];
        *pos += 1;
        match t {
            Tok::Text(s) => nodes.push(Node::Text(s.clone())),
            Tok::Act(a) => {
                let (kw, rest) = match a.split_once(char::is_whitespace) {
                    Some((k, r)) => (k, r.trim()),
                    None => (a.as_str(), ""),
                };
                match kw {
                    "end" => return Ok((nodes, Stop::End)),
                    "else" => {
                        let cond = rest.strip_prefix("if").map(|r| r.trim().to_string());
                        if cond.is_none() && !rest.is_empty() {
                            return Err(format!("unexpected {rest:?} after else"));
                        }
                        return Ok((nodes, Stop::Else(cond)));
                    }
                    "if" => nodes.push(parse_if(rest, toks, pos)?),
                    "with" | "range" => {
                        let mut vars = None;
                        let mut expr = rest;
                        if kw == "range"
                            && let Some((lhs, rhs)) = rest.split_once(":=")
                            && lhs.trim().starts_with('$')
                        {
                            let names: Vec<&str> = lhs.split(',').map(str::trim).collect();
                            let (k, v) = match names.as_slice() {
                                [v] => ("".to_string(), v.trim_start_matches('$').to_string()),
                                [k, v] => (
                                    k.trim_start_matches('$').to_string(),
                                    v.trim_start_matches('$').to_string(),
                                ),
                                _ => return Err("too many range variables".into()),
                            };
                            vars = Some((k, v));
                            expr = rhs.trim();
                        }
                        let p = parse_pipeline(expr, kw == "with")?;
                        let (body, stop) = parse_nodes(toks, pos)?;
                        let els = match stop {
                            Stop::End => Vec::new(),
                            Stop::Else(None) => match parse_nodes(toks, pos)? {
                                (e, Stop::End) => e,
                                _ => return Err(format!("unexpected EOF in {kw}")),
                            },
                            Stop::Else(Some(_)) => {
                                return Err(format!("else if inside {kw} is not supported"));
                            }
                            Stop::Eof => return Err(format!("unexpected EOF in {kw}")),
                        };
                        nodes.push(if kw == "with" {
                            Node::With(p, body, els)
                        } else {
                            Node::Range(p, vars, body, els)
                        });
                    }
                    "define" | "template" | "block" => {
                        return Err(format!("{kw:?} is not supported"));
                    }
                    _ => nodes.push(Node::Action(parse_pipeline(a, true)?)),
                }
            }
        }
    }
    Ok((nodes, Stop::Eof))
}

fn parse_if(cond: &str, toks: &[Tok], pos: &mut usize) -> Result<Node, String> {
    let p = parse_pipeline(cond, true)?;
    let (body, stop) = parse_nodes(toks, pos)?;
    let els = match stop {
        Stop::End => Vec::new(),
        Stop::Else(None) => match parse_nodes(toks, pos)? {
            (e, Stop::End) => e,
            _ => return Err("unexpected EOF in if".into()),
        },
        Stop::Else(Some(c)) => vec![parse_if(&c, toks, pos)?],
        Stop::Eof => return Err("unexpected EOF in if".into()),
    };
    Ok(Node::If(p, body, els))
}

impl Template {
    /// Parses `src`; errors name what is wrong.
    pub fn parse(src: &str) -> Result<Template, String> {
        let toks = split(src)?;
        let mut pos = 0;
        let (nodes, stop) = parse_nodes(&toks, &mut pos)?;
        match stop {
            Stop::Eof => Ok(Template { nodes }),
            Stop::End => Err("unexpected {{end}}".into()),
            Stop::Else(_) => Err("unexpected {{else}}".into()),
        }
    }

    /// Runs the template.
    pub fn execute(&self, data: &TemplateData<'_>) -> Result<String, String> {
        let mut root = BTreeMap::new();
        root.insert("Labels".to_string(), data.labels.clone());
        root.insert("ExternalLabels".to_string(), data.external_labels.clone());
        root.insert(
            "ExternalURL".to_string(),
            TVal::Str(data.external_url.clone()),
        );
        root.insert("Value".to_string(), TVal::Num(data.value));
        let root = TVal::Map(root);
        let mut ex = Exec {
            vars: vec![
                ("".to_string(), root.clone()),
                ("labels".to_string(), data.labels.clone()),
                ("externalLabels".to_string(), data.external_labels.clone()),
                (
                    "externalURL".to_string(),
                    TVal::Str(data.external_url.clone()),
                ),
                ("value".to_string(), TVal::Num(data.value)),
            ],
            data,
            out: String::new(),
            steps: 0,
        };
        ex.nodes(&self.nodes, &root)?;
        Ok(ex.out)
    }
}

/// Parses and runs `src` in one go (Prometheus expands label and annotation templates this way).
pub fn expand(src: &str, data: &TemplateData<'_>) -> Result<String, String> {
    if !src.contains("{{") {
        return Ok(src.to_string());
    }
    Template::parse(src)?.execute(data)
}

// ---------------------------------------------------------------------------------------------
// Execution

struct Exec<'a, 'b> {
    vars: Vec<(String, TVal)>,
    data: &'a TemplateData<'b>,
    out: String,
    steps: usize,
}

const MAX_STEPS: usize = 100_000;
const MAX_OUTPUT: usize = 1 << 20;

fn field(v: &TVal, names: &[String]) -> Result<TVal, String> {
    let mut cur = v.clone();
    for n in names {
        cur = match cur {
            TVal::Map(mut m) => m.remove(n).unwrap_or(TVal::Str(String::new())),
            TVal::Nil => TVal::Nil,
            other => {
                return Err(format!(
                    "can't evaluate field {n} in type {}",
                    type_name(&other)
                ));
            }
        };
    }
    Ok(cur)
}

fn type_name(v: &TVal) -> &'static str {
    match v {
        TVal::Nil => "nil",
        TVal::Bool(_) => "bool",
        TVal::Int(_) => "int",
        TVal::Num(_) => "float64",
        TVal::Str(_) => "string",
        TVal::Map(_) => "map",
        TVal::List(_) => "slice",
    }
}

impl Exec<'_, '_> {
    fn tick(&mut self) -> Result<(), String> {
        self.steps += 1;
        if self.steps > MAX_STEPS || self.out.len() > MAX_OUTPUT {
            return Err("template too expensive: step or output limit reached".into());
        }
        Ok(())
    }

    fn nodes(&mut self, nodes: &[Node], dot: &TVal) -> Result<(), String> {
        for n in nodes {
            self.tick()?;
            match n {
                Node::Text(t) => self.out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipeline(p, dot)?;
                    if p.decl.is_none() {
                        self.out.push_str(&v.render());
                    }
                }
                Node::If(p, a, b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    let r = if v.truthy() {
                        self.nodes(a, dot)
                    } else {
                        self.nodes(b, dot)
                    };
                    self.vars.truncate(mark);
                    r?;
                }
                Node::With(p, a, b) => {
                    let mark = self.vars.len();
                    let v = self.pipeline(p, dot)?;
                    let r = if v.truthy() {
                        self.nodes(a, &v)
                    } else {
                        self.nodes(b, dot)
                    };
                    self.vars.truncate(mark);
                    r?;
                }
                Node::Range(p, vars, body, els) => {
                    let v = self.pipeline(p, dot)?;
                    let items: Vec<(TVal, TVal)> = match v {
                        TVal::List(l) => l
                            .into_iter()
                            .enumerate()
                            .map(|(i, x)| (TVal::Int(i as i64), x))
                            .collect(),
                        TVal::Map(m) => m.into_iter().map(|(k, x)| (TVal::Str(k), x)).collect(),
                        TVal::Nil => Vec::new(),
                        TVal::Int(n) if n > MAX_STEPS as i64 => {
                            return Err("template too expensive: range too long".into());
                        }
                        TVal::Int(n) => (0..n.max(0))
                            .map(|i| (TVal::Int(i), TVal::Int(i)))
                            .collect(),
                        other => {
                            return Err(format!("range can't iterate over {}", other.render()));
                        }
                    };
                    if items.is_empty() {
                        self.nodes(els, dot)?;
                    }
                    for (k, x) in items {
                        let mark = self.vars.len();
                        if let Some((kn, vn)) = vars {
                            if !kn.is_empty() {
                                self.vars.push((kn.clone(), k));
                            }
                            self.vars.push((vn.clone(), x.clone()));
                        }
                        let r = self.nodes(body, &x);
                        self.vars.truncate(mark);
                        r?;
                    }
                }
            }
        }
        Ok(())
    }

    fn var(&self, name: &str) -> Result<TVal, String> {
        self.vars
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("undefined variable \"${name}\""))
    }

    fn pipeline(&mut self, p: &Pipeline, dot: &TVal) -> Result<TVal, String> {
        let mut prev: Option<TVal> = None;
        for cmd in &p.cmds {
            prev = Some(self.command(cmd, dot, prev)?);
        }
        let v = prev.unwrap_or(TVal::Nil);
        if let Some((name, is_decl)) = &p.decl {
            if *is_decl {
                self.vars.push((name.clone(), v.clone()));
            } else if let Some(slot) = self.vars.iter_mut().rev().find(|(n, _)| n == name) {
                slot.1 = v.clone();
            } else {
                return Err(format!("undefined variable \"${name}\""));
            }
        }
        Ok(v)
    }

    fn term(&mut self, t: &Term, dot: &TVal) -> Result<TVal, String> {
        Ok(match t {
            Term::Dot => dot.clone(),
            Term::Field(f) => field(dot, f)?,
            Term::Var(v, f) => field(&self.var(v)?, f)?,
            Term::Str(s) => TVal::Str(s.clone()),
            Term::Int(i) => TVal::Int(*i),
            Term::Num(n) => TVal::Num(*n),
            Term::Bool(b) => TVal::Bool(*b),
            Term::Nil => TVal::Nil,
            Term::Ident(name) => self.call(name, Vec::new())?,
            Term::Sub(p, f) => {
                let v = self.pipeline(p, dot)?;
                field(&v, f)?
            }
        })
    }

    fn command(&mut self, cmd: &[Term], dot: &TVal, piped: Option<TVal>) -> Result<TVal, String> {
        self.tick()?;
        if let Some(Term::Ident(name)) = cmd.first() {
            let mut args = Vec::with_capacity(cmd.len());
            for t in &cmd[1..] {
                args.push(self.term(t, dot)?);
            }
            if let Some(p) = piped {
                args.push(p);
            }
            return self.call(name, args);
        }
        if cmd.len() > 1 {
            return Err("can't give argument to non-function".into());
        }
        if piped.is_some() {
            return Err("can't give argument to non-function".into());
        }
        self.term(&cmd[0], dot)
    }

    fn call(&mut self, name: &str, args: Vec<TVal>) -> Result<TVal, String> {
        let want = |n: usize| -> Result<(), String> {
            if args.len() != n {
                Err(format!(
                    "wrong number of args for {name}: want {n} got {}",
                    args.len()
                ))
            } else {
                Ok(())
            }
        };
        let s0 = |a: &[TVal]| -> String { a.first().map(TVal::render).unwrap_or_default() };
        Ok(match name {
            "humanize" => {
                want(1)?;
                TVal::Str(humanize(args[0].as_f64()?))
            }
            "humanize1024" => {
                want(1)?;
                TVal::Str(humanize1024(args[0].as_f64()?))
            }
            "humanizeDuration" => {
                want(1)?;
                TVal::Str(humanize_duration(args[0].as_f64()?))
            }
            "humanizePercentage" => {
                want(1)?;
                TVal::Str(format!("{}%", go_g(args[0].as_f64()? * 100.0, Some(4))))
            }
            "humanizeTimestamp" => {
                want(1)?;
                TVal::Str(humanize_timestamp(args[0].as_f64()?))
            }
            "toUpper" => {
                want(1)?;
                TVal::Str(s0(&args).to_uppercase())
            }
            "toLower" => {
                want(1)?;
                TVal::Str(s0(&args).to_lowercase())
            }
            "title" => {
                want(1)?;
                TVal::Str(title(&s0(&args)))
            }
            "safeHtml" | "html" | "js" | "urlquery" => {
                want(1)?;
                TVal::Str(s0(&args))
            }
            "stripPort" => {
                want(1)?;
                let s = s0(&args);
                TVal::Str(match s.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                        h.trim_start_matches('[').trim_end_matches(']').to_string()
                    }
                    _ => s,
                })
            }
            "stripDomain" => {
                want(1)?;
                let s = s0(&args);
                let (host, port) = match s.rsplit_once(':') {
                    Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => {
                        (h.to_string(), format!(":{p}"))
                    }
                    _ => (s.clone(), String::new()),
                };
                if host.parse::<std::net::IpAddr>().is_ok() {
                    TVal::Str(s)
                } else {
                    TVal::Str(format!("{}{}", host.split('.').next().unwrap_or(""), port))
                }
            }
            "printf" => {
                if args.is_empty() {
                    return Err("wrong number of args for printf".into());
                }
                TVal::Str(sprintf(&s0(&args), &args[1..]))
            }
            "print" => TVal::Str(args.iter().map(TVal::render).collect::<Vec<_>>().join("")),
            "println" => TVal::Str(format!(
                "{}\n",
                args.iter().map(TVal::render).collect::<Vec<_>>().join(" ")
            )),
            "query" => {
                want(1)?;
                let Some(q) = self.data.query else {
                    return Err("query is not available here".into());
                };
                let res = q(&s0(&args))?;
                TVal::List(
                    res.into_iter()
                        .map(|(l, v)| {
                            let mut m = BTreeMap::new();
                            m.insert(
                                "Labels".to_string(),
                                TVal::from_labels(l.iter().map(|(a, b)| (a.as_str(), b.as_str()))),
                            );
                            m.insert("Value".to_string(), TVal::Num(v));
                            TVal::Map(m)
                        })
                        .collect(),
                )
            }
            "first" => {
                want(1)?;
                match &args[0] {
                    TVal::List(l) => match l.first() {
                        Some(x) => x.clone(),
                        None => return Err("first() called on vector with no elements".into()),
                    },
                    _ => return Err("first() needs a query result".into()),
                }
            }
            "value" => {
                want(1)?;
                field(&args[0], &["Value".to_string()])?
            }
            "label" => {
                want(2)?;
                field(&args[1], &["Labels".to_string(), s0(&args)])?
            }
            "strvalue" => {
                want(1)?;
                field(&args[0], &["Labels".to_string(), "__value__".to_string()])?
            }
            "sortByLabel" => {
                want(2)?;
                let key = s0(&args);
                let mut l = match &args[1] {
                    TVal::List(l) => l.clone(),
                    _ => return Err("sortByLabel needs a query result".into()),
                };
                l.sort_by_key(|x| {
                    field(x, &["Labels".to_string(), key.clone()])
                        .map(|v| v.render())
                        .unwrap_or_default()
                });
                TVal::List(l)
            }
            "reReplaceAll" => {
                want(3)?;
                let re = regex::Regex::new(&s0(&args)).map_err(|e| e.to_string())?;
                let repl = args[1].render();
                TVal::Str(re.replace_all(&args[2].render(), repl.as_str()).to_string())
            }
            "match" => {
                want(2)?;
                let re = regex::Regex::new(&s0(&args)).map_err(|e| e.to_string())?;
                TVal::Bool(re.is_match(&args[1].render()))
            }
            "args" => {
                let mut m = BTreeMap::new();
                for (i, a) in args.into_iter().enumerate() {
                    m.insert(format!("arg{i}"), a);
                }
                TVal::Map(m)
            }
            "externalURL" => TVal::Str(self.data.external_url.clone()),
            "pathPrefix" => TVal::Str(String::new()),
            "parseDuration" => {
                want(1)?;
                let ms = tidemark_model::time::parse_duration_millis(&s0(&args))
                    .map_err(|e| e.to_string())?;
                TVal::Num(ms as f64 / 1000.0)
            }
            "toTime" => {
                want(1)?;
                TVal::Str(humanize_timestamp(args[0].as_f64()?))
            }
            "len" => {
                want(1)?;
                TVal::Int(match &args[0] {
                    TVal::Str(s) => s.len(),
                    TVal::List(l) => l.len(),
                    TVal::Map(m) => m.len(),
                    other => return Err(format!("len of {}", type_name(other))),
                } as i64)
            }
            "index" => {
                if args.is_empty() {
                    return Err("wrong number of args for index".into());
                }
                let mut cur = args[0].clone();
                for k in &args[1..] {
                    cur = match (&cur, k) {
                        (TVal::Map(m), k) => m
                            .get(&k.render())
                            .cloned()
                            .unwrap_or(TVal::Str(String::new())),
                        (TVal::List(l), TVal::Int(i)) => l
                            .get(
                                usize::try_from(*i)
                                    .map_err(|_| "index out of range".to_string())?,
                            )
                            .cloned()
                            .ok_or("index out of range")?,
                        _ => return Err("can't index item".into()),
                    };
                }
                cur
            }
            "not" => {
                want(1)?;
                TVal::Bool(!args[0].truthy())
            }
            "and" => {
                let mut last = TVal::Nil;
                for a in args {
                    if !a.truthy() {
                        return Ok(a);
                    }
                    last = a;
                }
                last
            }
            "or" => {
                let mut last = TVal::Nil;
                for a in args {
                    if a.truthy() {
                        return Ok(a);
                    }
                    last = a;
                }
                last
            }
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                if args.len() < 2 {
                    return Err(format!("missing argument for {name}"));
                }
                if name == "eq" {
                    return Ok(TVal::Bool(
                        args[1..]
                            .iter()
                            .any(|b| cmp(&args[0], b) == Some(std::cmp::Ordering::Equal)),
                    ));
                }
                want(2)?;
                let o = cmp(&args[0], &args[1])
                    .ok_or_else(|| format!("incompatible types for comparison in {name}"))?;
                use std::cmp::Ordering::*;
                TVal::Bool(match name {
                    "ne" => o != Equal,
                    "lt" => o == Less,
                    "le" => o != Greater,
                    "gt" => o == Greater,
                    _ => o != Less,
                })
            }
            _ => return Err(format!("function {name:?} not defined")),
        })
    }
}

fn cmp(a: &TVal, b: &TVal) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (TVal::Str(x), TVal::Str(y)) => Some(x.cmp(y)),
        (TVal::Bool(x), TVal::Bool(y)) => Some(x.cmp(y)),
        (TVal::Nil, TVal::Nil) => Some(std::cmp::Ordering::Equal),
        (x, y) => {
            let (x, y) = (num(x)?, num(y)?);
            x.partial_cmp(&y)
        }
    }
}

fn num(v: &TVal) -> Option<f64> {
    match v {
        TVal::Int(i) => Some(*i as f64),
        TVal::Num(f) => Some(*f),
        _ => None,
    }
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric() && c != '\'';
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Number formatting, as Go's strconv/fmt and Prometheus' humanize functions do it.

/// Go's `%g` with `prec` significant digits (None: shortest, as `%v`).
pub fn go_g(v: f64, prec: Option<usize>) -> String {
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
    let neg = v < 0.0;
    let a = v.abs();
    // Digits and decimal exponent: a = 0.d1d2d3... * 10^dp
    let e = match prec {
        Some(p) => format!("{:.*e}", p.max(1) - 1, a),
        None => format!("{a:e}"),
    };
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let shortest = prec.is_none();
    let mut p = prec.map(|p| p.max(1) as i32).unwrap_or(nd);
    let mut eprec = p;
    if eprec > nd && nd >= dp {
        eprec = nd;
    }
    if shortest {
        eprec = 6;
    }
    let x = dp - 1;
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if x < -4 || x >= eprec {
        if p > nd {
            p = nd;
        }
        out.push_str(&digits[..1]);
        let frac_len = (p - 1).max(0) as usize;
        if frac_len > 0 {
            out.push('.');
            for i in 0..frac_len {
                out.push(
                    digits
                        .as_bytes()
                        .get(i + 1)
                        .map(|b| *b as char)
                        .unwrap_or('0'),
                );
            }
        }
        let _ = write!(out, "e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs());
        return out;
    }
    if p > dp {
        p = nd;
    }
    let frac = (p - dp).max(0);
    // integer part
    if dp <= 0 {
        out.push('0');
    } else {
        for i in 0..dp {
            out.push(
                digits
                    .as_bytes()
                    .get(i as usize)
                    .map(|b| *b as char)
                    .unwrap_or('0'),
            );
        }
    }
    if frac > 0 {
        out.push('.');
        for i in 0..frac {
            let idx = dp + i;
            let c = if idx < 0 {
                '0'
            } else {
                digits
                    .as_bytes()
                    .get(idx as usize)
                    .map(|b| *b as char)
                    .unwrap_or('0')
            };
            out.push(c);
        }
    }
    out
}

/// Prometheus' `humanize`.
pub fn humanize(mut v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return go_g(v, Some(4));
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in ["k", "M", "G", "T", "P", "E", "Z", "Y"] {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", go_g(v, Some(4)))
}

/// Prometheus' `humanize1024`.
pub fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || !v.is_finite() {
        return go_g(v, Some(4));
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_g(v, Some(4)))
}

/// Prometheus' `humanizeDuration` (seconds in).
pub fn humanize_duration(mut v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", go_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        v = v.abs();
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", go_g(v, Some(4)));
    }
    let mut prefix = "";
    for p in ["m", "u", "n", "p", "f", "a", "z", "y"] {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_g(v, Some(4)))
}

fn humanize_timestamp(v: f64) -> String {
    if !v.is_finite() {
        return go_g(v, Some(4));
    }
    let secs = v.trunc() as i64;
    let nanos = ((v - v.trunc()) * 1e9).round() as u32;
    match chrono::DateTime::from_timestamp(secs, nanos) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        None => go_g(v, Some(4)),
    }
}

/// Go's `fmt.Sprintf` for the common verbs (`%s %v %d %f %e %g %q %x %t %%`, flags, width,
/// precision).
pub fn sprintf(fmtstr: &str, args: &[TVal]) -> String {
    let mut out = String::new();
    let c: Vec<char> = fmtstr.chars().collect();
    let mut i = 0;
    let mut ai = 0;
    while i < c.len() {
        if c[i] != '%' {
            out.push(c[i]);
            i += 1;
            continue;
        }
        i += 1;
        let mut minus = false;
        let mut plus = false;
        let mut zero = false;
        while i < c.len() && matches!(c[i], '-' | '+' | '0' | ' ' | '#') {
            match c[i] {
                '-' => minus = true,
                '+' => plus = true,
                '0' => zero = true,
                _ => {}
            }
            i += 1;
        }
        let mut width = 0usize;
        while i < c.len() && c[i].is_ascii_digit() {
            width = width
                .saturating_mul(10)
                .saturating_add(c[i] as usize - '0' as usize);
            i += 1;
        }
        let mut prec = None;
        if i < c.len() && c[i] == '.' {
            i += 1;
            let mut p = 0usize;
            while i < c.len() && c[i].is_ascii_digit() {
                p = p
                    .saturating_mul(10)
                    .saturating_add(c[i] as usize - '0' as usize);
                i += 1;
            }
            prec = Some(p);
        }
        // Bounded: a hostile format must not allocate gigabytes.
        let width = width.min(4096);
        let prec = prec.map(|p| p.min(1024));
        let Some(&verb) = c.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(ai) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        ai += 1;
        let mut s = match (verb, arg) {
            ('d', TVal::Int(n)) => n.to_string(),
            ('d', TVal::Num(f)) if f.fract() == 0.0 && f.is_finite() => {
                format!("%!d(float64={})", go_g(*f, None))
            }
            ('f' | 'F', a) => match a.as_f64() {
                Ok(f) if f.is_finite() => format!("{:.*}", prec.unwrap_or(6), f),
                Ok(f) => go_g(f, None),
                Err(_) => format!("%!f({}={})", type_name(a), a.render()),
            },
            ('e', a) => match a.as_f64() {
                Ok(f) => go_e(f, prec.unwrap_or(6)),
                Err(_) => format!("%!e({}={})", type_name(a), a.render()),
            },
            ('g', TVal::Num(f)) => go_g(*f, prec),
            ('g', TVal::Int(n)) => format!("%!g(int={n})"),
            ('q', a) => format!("{:?}", a.render()),
            ('x', TVal::Int(n)) => format!("{n:x}"),
            ('x', a) => a.render().bytes().map(|b| format!("{b:02x}")).collect(),
            ('s' | 'v' | 't', a) => {
                let mut r = a.render();
                if let (Some(p), 's') = (prec, verb) {
                    r = r.chars().take(p).collect();
                }
                r
            }
            (v, a) => format!("%!{v}({}={})", type_name(a), a.render()),
        };
        if plus && matches!(arg, TVal::Int(_) | TVal::Num(_)) && !s.starts_with('-') {
            s.insert(0, '+');
        }
        let len = s.chars().count();
        if len < width {
            let pad = width - len;
            if minus {
                s.push_str(&" ".repeat(pad));
            } else if zero && matches!(arg, TVal::Int(_) | TVal::Num(_)) {
                let (sign, rest) = if s.starts_with(['-', '+']) {
                    s.split_at(1)
                } else {
                    ("", s.as_str())
                };
                s = format!("{sign}{}{rest}", "0".repeat(pad));
            } else {
                s = format!("{}{s}", " ".repeat(pad));
            }
        }
        out.push_str(&s);
    }
    if ai < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[ai..]
            .iter()
            .map(|a| format!("{}={}", type_name(a), a.render()))
            .collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

fn go_e(f: f64, prec: usize) -> String {
    if !f.is_finite() {
        return go_g(f, None);
    }
    let s = format!("{f:.prec$e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let x: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs())
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(value: f64) -> TemplateData<'static> {
        TemplateData {
            labels: TVal::from_labels([("instance", "host:9100"), ("job", "node")]),
            external_labels: TVal::from_labels([("cluster", "eu1")]),
            external_url: "http://tm".into(),
            value,
            query: None,
        }
    }

    fn run(src: &str, v: f64) -> String {
        expand(src, &data(v)).unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn go_float_formatting() {
        let cases: &[(f64, Option<usize>, &str)] = &[
            (1.0, None, "1"),
            (0.5, None, "0.5"),
            (1e6, None, "1e+06"),
            (123456.0, None, "123456"),
            (1e-5, None, "1e-05"),
            (0.0001, None, "0.0001"),
            (1.5, Some(4), "1.5"),
            (1234.5678, Some(4), "1235"),
            (12345.0, Some(4), "1.234e+04"),
            (100.0, Some(4), "100"),
            (0.000123456, Some(4), "0.0001235"),
            (-2.5, None, "-2.5"),
            (f64::INFINITY, Some(4), "+Inf"),
        ];
        for (v, p, want) in cases {
            assert_eq!(go_g(*v, *p), *want, "{v} {p:?}");
        }
    }

    #[test]
    fn humanize_functions() {
        assert_eq!(humanize(1234567.0), "1.235M");
        assert_eq!(humanize(0.001234), "1.234m");
        assert_eq!(humanize(0.0), "0");
        assert_eq!(humanize(12.0), "12");
        assert_eq!(humanize1024(2048.0), "2ki");
        assert_eq!(humanize_duration(3661.0), "1h 1m 1s");
        assert_eq!(humanize_duration(90061.0), "1d 1h 1m 1s");
        assert_eq!(humanize_duration(1.5), "1.5s");
        assert_eq!(humanize_duration(0.25), "250ms");
        assert_eq!(humanize_duration(0.0), "0s");
        assert_eq!(run("{{ humanizePercentage 0.1234 }}", 0.0), "12.34%");
        assert_eq!(run("{{ 1e6 | humanize }}", 0.0), "1M");
    }

    #[test]
    fn variables_and_fields() {
        assert_eq!(
            run("{{ $labels.instance }} is down", 1.0),
            "host:9100 is down"
        );
        assert_eq!(
            run("{{ .Labels.job }}/{{ $externalLabels.cluster }}", 1.0),
            "node/eu1"
        );
        assert_eq!(run("v={{ $value }}", 0.25), "v=0.25");
        assert_eq!(run("{{ $labels.missing }}", 1.0), "");
        assert_eq!(run("{{ $x := 5 }}{{ $x }}", 1.0), "5");
    }

    #[test]
    fn functions_and_control() {
        assert_eq!(run("{{ printf \"%.2f\" $value }}", 1.23456), "1.23");
        assert_eq!(run("{{ printf \"%s-%d\" \"a\" 3 }}", 0.0), "a-3");
        assert_eq!(run("{{ $labels.job | toUpper }}", 0.0), "NODE");
        assert_eq!(run("{{ toLower \"AbC\" }}", 0.0), "abc");
        assert_eq!(
            run("{{ if gt $value 10.0 }}big{{ else }}small{{ end }}", 11.0),
            "big"
        );
        assert_eq!(
            run(
                "{{ if gt $value 10.0 }}big{{ else if gt $value 5.0 }}mid{{ else }}small{{ end }}",
                6.0
            ),
            "mid"
        );
        assert_eq!(
            run("{{ with $labels.job }}job={{ . }}{{ end }}", 0.0),
            "job=node"
        );
        assert_eq!(
            run(
                "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
                0.0
            ),
            "instance=host:9100;job=node;"
        );
        assert_eq!(run("a  {{- \"b\" -}}  c", 0.0), "abc");
        assert_eq!(run("{{/* comment */}}x", 0.0), "x");
        assert_eq!(run("{{ title \"hello world\" }}", 0.0), "Hello World");
        assert_eq!(
            run("{{ reReplaceAll \":.*\" \"\" $labels.instance }}", 0.0),
            "host"
        );
        assert_eq!(run("{{ $labels.instance | stripPort }}", 0.0), "host");
    }

    #[test]
    fn query_function() {
        let q = |e: &str| -> QueryResult {
            assert_eq!(e, "up");
            Ok(vec![(vec![("job".into(), "a".into())], 42.0)])
        };
        let mut d = data(0.0);
        d.query = Some(&q);
        let out = expand("{{ with query \"up\" }}{{ . | first | value }} {{ . | first | label \"job\" }}{{ end }}", &d).unwrap();
        assert_eq!(out, "42 a");
        let out = expand(
            "{{ range query \"up\" }}{{ .Labels.job }}:{{ .Value }}{{ end }}",
            &d,
        )
        .unwrap();
        assert_eq!(out, "a:42");
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "{{ $labels.x ",
            "{{ if 1 }}x",
            "{{ end }}",
            "{{ nosuchfunc 1 }}",
            "{{ \"a }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert!(expand("{{ $nosuch }}", &data(0.0)).is_err());
    }

    #[test]
    fn hostile_templates_are_bounded() {
        let r = expand("{{ range 100000000 }}xxxxxxxxxxxx{{ end }}", &data(0.0));
        assert!(r.is_err());
    }
}
