//! Evaluation of one rule group: rules in order at one timestamp, recording output appended
//! through [`Appendable`], staleness markers for vanished series, alert states
//! (inactive/pending/firing with `for` and `keep_firing_for`), the `ALERTS` and
//! `ALERTS_FOR_STATE` series, and the restore of `for` state from `ALERTS_FOR_STATE` after a
//! restart (modelled on Prometheus' rules/group.go and rules/alerting.go).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use tidemark_model::{Labels, LabelsBuilder, METRIC_NAME, Matcher, stale_nan};
use tidemark_promql::{Engine, QueryParams, Value};
use tidemark_storage::{Appendable, Queryable};
use tracing::debug;

use crate::file::{GroupDef, RuleDef};
use crate::template::{self, TVal, TemplateData};

/// Alerts that stopped firing are kept (and re-sent as resolved) this long.
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Settings shared by all groups.
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// `global.external_labels`: visible to templates as `$externalLabels`, added to notifications.
    pub external_labels: Vec<(String, String)>,
    /// `--web.external-url`, for `$externalURL` and generator URLs.
    pub external_url: String,
    /// How far back `ALERTS_FOR_STATE` is read on restore (Prometheus
    /// `--rules.alert.for-outage-tolerance`, default 1h).
    pub outage_tolerance_ms: i64,
    /// Minimum `for` left after a restore (`--rules.alert.for-grace-period`, default 10m).
    pub for_grace_period_ms: i64,
    /// Resend firing alerts this often (`--rules.alert.resend-delay`, default 1m).
    pub resend_delay_ms: i64,
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions {
            external_labels: Vec::new(),
            external_url: String::new(),
            outage_tolerance_ms: 3_600_000,
            for_grace_period_ms: 600_000,
            resend_delay_ms: 60_000,
        }
    }
}

/// What a group evaluates against.
#[derive(Clone, Copy)]
pub struct EvalContext<'a> {
    pub engine: &'a Engine,
    pub queryable: &'a dyn Queryable,
    pub appendable: &'a dyn Appendable,
    pub opts: &'a GroupOptions,
}

impl std::fmt::Debug for EvalContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvalContext").finish_non_exhaustive()
    }
}

/// An alert's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

/// One alert of an alerting rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub labels: Labels,
    pub annotations: BTreeMap<String, String>,
    pub state: AlertState,
    pub value: f64,
    /// Milliseconds.
    pub active_at: i64,
    pub fired_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub last_sent_at: Option<i64>,
    pub valid_until: i64,
    pub keep_firing_since: Option<i64>,
}

/// Health of a rule's last evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuleHealth {
    /// None before the first evaluation.
    pub last_error: Option<String>,
    pub evaluated: bool,
    /// Milliseconds since the epoch.
    pub last_evaluation: i64,
    /// Seconds.
    pub evaluation_time: f64,
}

impl RuleHealth {
    pub fn health(&self) -> &'static str {
        match (self.evaluated, &self.last_error) {
            (false, _) => "unknown",
            (true, None) => "ok",
            (true, Some(_)) => "err",
        }
    }
}

/// A rule with its runtime state.
#[derive(Debug, Clone)]
pub struct Rule {
    pub def: RuleDef,
    /// Group labels merged under the rule's own.
    pub labels: BTreeMap<String, String>,
    pub health: RuleHealth,
    /// Alerting rules: active alerts by label hash.
    pub active: HashMap<u64, Alert>,
    /// Series written at the previous evaluation (for staleness markers).
    prev_series: HashSet<Labels>,
}

impl Rule {
    pub fn is_alert(&self) -> bool {
        self.def.alert.is_some()
    }

    pub fn name(&self) -> &str {
        self.def.name()
    }

    fn for_ms(&self) -> i64 {
        self.def.for_.map(|d| d.0).unwrap_or(0)
    }

    fn keep_firing_ms(&self) -> i64 {
        self.def.keep_firing_for.map(|d| d.0).unwrap_or(0)
    }

    /// Alerts sorted by labels.
    pub fn alerts(&self) -> Vec<&Alert> {
        let mut v: Vec<&Alert> = self.active.values().collect();
        v.sort_by(|a, b| a.labels.cmp(&b.labels));
        v
    }

    /// Overall state of an alerting rule (firing > pending > inactive).
    pub fn state(&self) -> AlertState {
        let mut s = AlertState::Inactive;
        for a in self.active.values() {
            match a.state {
                AlertState::Firing => return AlertState::Firing,
                AlertState::Pending => s = AlertState::Pending,
                AlertState::Inactive => {}
            }
        }
        s
    }
}

/// A group of rules evaluated together.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub file: String,
    pub interval_ms: i64,
    pub query_offset_ms: i64,
    pub limit: u64,
    pub rules: Vec<Rule>,
    /// Milliseconds since the epoch of the last evaluation; 0 before the first.
    pub last_evaluation: i64,
    /// Seconds the last evaluation took.
    pub evaluation_time: f64,
    /// True once `for` state was restored (after the first evaluation).
    restored: bool,
}

impl Group {
    /// Builds a group from its definition. `default_interval_ms` and `default_offset_ms` come
    /// from `global:`.
    pub fn new(
        file: &str,
        def: &GroupDef,
        default_interval_ms: i64,
        default_offset_ms: i64,
    ) -> Group {
        let rules = def
            .rules
            .iter()
            .map(|r| {
                let mut labels = def.labels.clone();
                labels.extend(r.labels.clone());
                Rule {
                    def: r.clone(),
                    labels,
                    health: RuleHealth::default(),
                    active: HashMap::new(),
                    prev_series: HashSet::new(),
                }
            })
            .collect();
        Group {
            name: def.name.clone(),
            file: file.to_string(),
            interval_ms: def
                .interval
                .map(|d| d.0)
                .unwrap_or(default_interval_ms)
                .max(1),
            query_offset_ms: def
                .query_offset
                .map(|d| d.0)
                .unwrap_or(default_offset_ms)
                .max(0),
            limit: def.limit,
            rules,
            last_evaluation: 0,
            evaluation_time: 0.0,
            restored: false,
        }
    }

    /// Another node evaluates this group now (cluster): forget the alert state; if the group
    /// comes back here, its `for` state is restored from `ALERTS_FOR_STATE` as after a restart.
    pub fn release(&mut self) {
        for r in &mut self.rules {
            r.active.clear();
            r.prev_series.clear();
        }
        self.restored = false;
    }

    /// Skip the restore of `for` state (for unit tests that start from nothing).
    pub fn mark_restored(&mut self) {
        self.restored = true;
    }

    /// A stable hash of the group's identity, used to spread evaluation times.
    pub fn hash(&self) -> u64 {
        let mut b = Vec::with_capacity(self.name.len() + self.file.len() + 1);
        b.extend_from_slice(self.name.as_bytes());
        b.push(0xff);
        b.extend_from_slice(self.file.as_bytes());
        xxhash_rust::xxh3::xxh3_64(&b)
    }

    /// The evaluation timestamp for wall-clock `now_ms`, aligned like Prometheus: every
    /// `interval` at a fixed offset (the group hash modulo the interval).
    pub fn eval_timestamp(&self, now_ms: i64) -> i64 {
        let iv = self.interval_ms;
        let offset = (self.hash() % iv as u64) as i64;
        let adj = now_ms - offset;
        adj - adj.rem_euclid(iv) + offset
    }

    /// Copies runtime state from an older version of this group (after a reload): for each rule
    /// the same name at the same position among same-named rules keeps its alerts and series.
    pub fn copy_state(&mut self, old: &Group) {
        let mut seen: HashMap<(&str, bool), usize> = HashMap::new();
        let mut old_idx: HashMap<(String, bool, usize), &Rule> = HashMap::new();
        for r in &old.rules {
            let n = seen.entry((r.name(), r.is_alert())).or_insert(0);
            old_idx.insert((r.name().to_string(), r.is_alert(), *n), r);
            *n += 1;
        }
        let mut seen: HashMap<(String, bool), usize> = HashMap::new();
        for r in &mut self.rules {
            let n = seen
                .entry((r.name().to_string(), r.is_alert()))
                .or_insert(0);
            if let Some(o) = old_idx.get(&(r.name().to_string(), r.is_alert(), *n)) {
                r.active = o.active.clone();
                r.prev_series = o.prev_series.clone();
                r.health = o.health.clone();
            }
            *n += 1;
        }
        self.last_evaluation = old.last_evaluation;
        self.evaluation_time = old.evaluation_time;
        self.restored = old.restored;
    }

    /// Writes staleness markers for everything this group wrote last (the group was removed).
    pub fn mark_all_stale(&mut self, appendable: &dyn Appendable, ts: i64) {
        let mut app = appendable.background_appender();
        for r in &mut self.rules {
            for l in r.prev_series.drain() {
                let _ = app.append(None, &l, ts, stale_nan());
            }
        }
        if let Err(e) = app.commit() {
            debug!(group = %self.name, error = %e, "writing staleness markers failed");
        }
    }

    /// Evaluates every rule at `ts` (milliseconds; the query offset is subtracted here).
    pub fn eval(&mut self, ctx: &EvalContext<'_>, ts: i64) {
        let start = Instant::now();
        let ts = ts - self.query_offset_ms;
        let restore_now = !self.restored;
        for i in 0..self.rules.len() {
            let t0 = Instant::now();
            let res = if self.rules[i].is_alert() {
                eval_alerting(&mut self.rules[i], ctx, ts, self.limit).map(|()| {
                    if restore_now {
                        restore_for_state(&mut self.rules[i], ctx, ts);
                        advance_states(&mut self.rules[i], ts);
                    }
                    alert_series(&self.rules[i])
                })
            } else {
                eval_recording(&self.rules[i], ctx, ts, self.limit)
            };
            let rule = &mut self.rules[i];
            let failed = res.is_err();
            let out = match res {
                Ok(out) => {
                    rule.health.last_error = None;
                    out
                }
                Err(e) => {
                    debug!(group = %self.name, rule = %rule.name(), error = %e, "rule evaluation failed");
                    rule.health.last_error = Some(e);
                    Vec::new()
                }
            };
            // One commit per rule, as Prometheus: later rules of the group see this output.
            let mut app = ctx.appendable.background_appender();
            let mut now_series = HashSet::with_capacity(out.len());
            for (l, v) in &out {
                if let Err(e) = app.append(None, l, ts, *v) {
                    debug!(series = %l, error = %e, "rule output sample rejected");
                }
                now_series.insert(l.clone());
            }
            if !failed {
                for gone in rule.prev_series.difference(&now_series) {
                    let _ = app.append(None, gone, ts, stale_nan());
                }
                rule.prev_series = now_series;
            }
            if let Err(e) = app.commit() {
                debug!(group = %self.name, rule = %rule.name(), error = %e, "committing rule output failed");
            }
            rule.health.evaluated = true;
            rule.health.last_evaluation = ts + self.query_offset_ms;
            rule.health.evaluation_time = t0.elapsed().as_secs_f64();
        }
        self.restored = true;
        self.last_evaluation = ts + self.query_offset_ms;
        self.evaluation_time = start.elapsed().as_secs_f64();
    }

    /// Alerts due to be sent to Alertmanager after an evaluation at `ts` (updates their
    /// last-sent and valid-until times), with external labels added.
    pub fn alerts_to_send(&mut self, ts: i64, opts: &GroupOptions) -> Vec<Alert> {
        let mut out = Vec::new();
        let delta = opts.resend_delay_ms.max(self.interval_ms);
        for r in &mut self.rules {
            for a in r.active.values_mut() {
                if !needs_sending(a, ts, opts.resend_delay_ms) {
                    continue;
                }
                a.last_sent_at = Some(ts);
                a.valid_until = ts + 4 * delta;
                let mut sent = a.clone();
                if !opts.external_labels.is_empty() {
                    let mut b = sent.labels.to_builder();
                    for (k, v) in &opts.external_labels {
                        if !sent.labels.has(k) {
                            b.set(k, v);
                        }
                    }
                    sent.labels = b.build();
                }
                out.push(sent);
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out
    }
}

fn needs_sending(a: &Alert, ts: i64, resend_delay: i64) -> bool {
    if a.state == AlertState::Pending {
        return false;
    }
    if let Some(r) = a.resolved_at
        && a.last_sent_at.is_none_or(|s| r > s)
    {
        return true;
    }
    match a.last_sent_at {
        None => true,
        Some(s) => s + resend_delay < ts,
    }
}

/// Runs `expr` at `ts` and returns an instant vector (a scalar becomes one unlabelled sample).
pub(crate) fn query_vector(
    ctx: &EvalContext<'_>,
    expr: &str,
    ts: i64,
) -> Result<Vec<(Labels, f64)>, String> {
    let r = ctx
        .engine
        .instant_query(ctx.queryable, expr, ts, &QueryParams::default())
        .map_err(|e| e.message.clone())?;
    match r.value {
        Value::Vector(v) => Ok(v.into_iter().map(|s| (s.labels, s.v)).collect()),
        Value::Scalar { v, .. } => Ok(vec![(Labels::empty(), v)]),
        other => Err(format!(
            "rule result is not a vector or scalar: {}",
            other.type_name()
        )),
    }
}

fn eval_recording(
    rule: &Rule,
    ctx: &EvalContext<'_>,
    ts: i64,
    limit: u64,
) -> Result<Vec<(Labels, f64)>, String> {
    let res = query_vector(ctx, &rule.def.expr, ts)?;
    let mut out = Vec::with_capacity(res.len());
    let mut seen = HashSet::with_capacity(res.len());
    let name = rule.def.record.as_deref().unwrap_or("");
    for (l, v) in res {
        let mut b = l.to_builder();
        b.set(METRIC_NAME, name);
        for (k, val) in &rule.labels {
            if val.is_empty() {
                b.del(k);
            } else {
                b.set(k, val);
            }
        }
        let l = b.build();
        if !seen.insert(l.clone()) {
            return Err(
                "vector contains metrics with the same labelset after applying rule labels".into(),
            );
        }
        out.push((l, v));
    }
    if limit > 0 && out.len() as u64 > limit {
        return Err(format!(
            "exceeded limit of {limit} with {} series",
            out.len()
        ));
    }
    Ok(out)
}

fn labels_tval(l: &Labels) -> TVal {
    TVal::from_labels(l.iter().map(|x| (x.name, x.value)))
}

fn eval_alerting(
    rule: &mut Rule,
    ctx: &EvalContext<'_>,
    ts: i64,
    limit: u64,
) -> Result<(), String> {
    let res = query_vector(ctx, &rule.def.expr, ts)?;
    let ext = TVal::from_labels(
        ctx.opts
            .external_labels
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str())),
    );
    let qf = |e: &str| -> template::QueryResult {
        Ok(query_vector(ctx, e, ts)?
            .into_iter()
            .map(|(l, v)| {
                (
                    l.iter()
                        .map(|x| (x.name.to_string(), x.value.to_string()))
                        .collect(),
                    v,
                )
            })
            .collect())
    };
    let alertname = rule.def.alert.clone().unwrap_or_default();
    let mut result_fps = HashSet::new();
    let mut fresh: Vec<(u64, Alert)> = Vec::new();
    for (l, v) in res {
        let data = TemplateData {
            labels: labels_tval(&l),
            external_labels: ext.clone(),
            external_url: ctx.opts.external_url.clone(),
            value: v,
            query: Some(&qf),
        };
        let mut b: LabelsBuilder = l.to_builder();
        b.del(METRIC_NAME);
        for (k, tmpl) in &rule.labels {
            let val = template::expand(tmpl, &data)
                .unwrap_or_else(|e| format!("<error expanding template: {e}>"));
            if val.is_empty() {
                b.del(k);
            } else {
                b.set(k, &val);
            }
        }
        b.set("alertname", &alertname);
        let labels = b.build();
        let mut annotations = BTreeMap::new();
        for (k, tmpl) in &rule.def.annotations {
            let val = template::expand(tmpl, &data)
                .unwrap_or_else(|e| format!("<error expanding template: {e}>"));
            annotations.insert(k.clone(), val);
        }
        let h = labels.stable_hash();
        if !result_fps.insert(h) {
            return Err(
                "vector contains metrics with the same labelset after applying alert labels".into(),
            );
        }
        fresh.push((
            h,
            Alert {
                labels,
                annotations,
                state: AlertState::Pending,
                value: v,
                active_at: ts,
                fired_at: None,
                resolved_at: None,
                last_sent_at: None,
                valid_until: 0,
                keep_firing_since: None,
            },
        ));
    }
    for (h, a) in fresh {
        match rule.active.get_mut(&h) {
            Some(old) if old.state != AlertState::Inactive => {
                old.value = a.value;
                old.annotations = a.annotations;
            }
            _ => {
                rule.active.insert(h, a);
            }
        }
    }
    let keep_for = rule.keep_firing_ms();
    let mut remove = Vec::new();
    for (h, a) in rule.active.iter_mut() {
        if !result_fps.contains(h) {
            let mut keep_firing = false;
            if a.state == AlertState::Firing && keep_for > 0 {
                let since = *a.keep_firing_since.get_or_insert(ts);
                if ts - since < keep_for {
                    keep_firing = true;
                }
            }
            if a.state == AlertState::Pending
                || a.resolved_at
                    .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
            {
                remove.push(*h);
            }
            if a.state != AlertState::Inactive && !keep_firing {
                a.state = AlertState::Inactive;
                a.resolved_at = Some(ts);
            }
        } else {
            a.keep_firing_since = None;
        }
    }
    for h in remove {
        rule.active.remove(&h);
    }
    advance_states(rule, ts);
    let n = rule
        .active
        .values()
        .filter(|a| a.state != AlertState::Inactive)
        .count();
    if limit > 0 && n as u64 > limit {
        rule.active.clear();
        return Err(format!("exceeded limit of {limit} with {n} alerts"));
    }
    Ok(())
}

/// Pending alerts whose `for` has elapsed become firing.
fn advance_states(rule: &mut Rule, ts: i64) {
    let hold = rule.for_ms();
    for a in rule.active.values_mut() {
        if a.state == AlertState::Pending && ts - a.active_at >= hold {
            a.state = AlertState::Firing;
            a.fired_at = Some(ts);
        }
    }
}

/// `ALERTS` and `ALERTS_FOR_STATE` samples of the rule's active alerts.
fn alert_series(rule: &Rule) -> Vec<(Labels, f64)> {
    let mut out = Vec::new();
    for a in rule.active.values() {
        if a.state == AlertState::Inactive {
            continue;
        }
        let mut b = a.labels.to_builder();
        b.set(METRIC_NAME, "ALERTS");
        b.set("alertstate", a.state.as_str());
        out.push((b.build(), 1.0));
        let mut b = a.labels.to_builder();
        b.set(METRIC_NAME, "ALERTS_FOR_STATE");
        out.push((b.build(), (a.active_at / 1000) as f64));
    }
    out
}

/// After a restart: for each pending alert of a rule with `for`, find the last
/// `ALERTS_FOR_STATE` sample within the outage tolerance and take its `activeAt`, so that an
/// alert that was firing (or pending for a while) before the restart continues where it was.
fn restore_for_state(rule: &mut Rule, ctx: &EvalContext<'_>, ts: i64) {
    let hold = rule.for_ms();
    if hold == 0 {
        return;
    }
    let mint = ts - ctx.opts.outage_tolerance_ms - hold;
    let maxt = ts - 1;
    let q = match ctx.queryable.querier(mint, maxt) {
        Ok(q) => q,
        Err(e) => {
            debug!(error = %e, "restoring alert state: querier failed");
            return;
        }
    };
    for a in rule.active.values_mut() {
        if a.state == AlertState::Inactive {
            continue;
        }
        let mut ms = vec![Matcher::equal(METRIC_NAME, "ALERTS_FOR_STATE")];
        for l in a.labels.iter() {
            ms.push(Matcher::equal(l.name, l.value));
        }
        let mut last: Option<(i64, f64)> = None;
        for s in q.select(false, None, &ms) {
            let Ok(s) = s else { continue };
            // Exact label match only (the matchers allow extra labels).
            if s.labels().len() != a.labels.len() + 1 {
                continue;
            }
            let mut it = s.iter();
            while it.next() {
                let (t, v) = (it.at().t, it.at().v);
                if !v.is_nan() && last.is_none_or(|(lt, _)| t >= lt) {
                    last = Some((t, v));
                }
            }
        }
        let Some((down_at, v)) = last else { continue };
        let mut active_at = (v as i64) * 1000;
        let spent = down_at - active_at;
        let remaining = hold - spent;
        if remaining <= 0 {
            // Was firing before the outage: keep its activeAt.
        } else if remaining < ctx.opts.for_grace_period_ms {
            active_at = ts + ctx.opts.for_grace_period_ms - hold;
        } else {
            active_at += ts - down_at;
        }
        debug!(alert = %a.labels, active_at, "restored alert for-state");
        a.active_at = active_at;
    }
}
