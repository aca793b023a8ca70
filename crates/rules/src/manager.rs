//! The rule manager: loads `rule_files`, runs every group on its own schedule (a tokio task per
//! group, evaluation on a blocking thread), sends alerts to the notifier, keeps state across
//! reloads, and renders `/api/v1/rules` and `/api/v1/alerts`.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use serde_json::{Value as Json, json};
use tidemark_promql::Engine;
use tidemark_scrape::PrometheusConfig;
use tidemark_storage::{Appendable, Queryable};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::file;
use crate::group::{Alert, AlertState, EvalContext, Group, GroupOptions, Rule};
use crate::notifier::{self, AmAlert, Notifier};

/// Filters of `/api/v1/rules` (as Grafana sends them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulesFilter {
    /// `alert` or `record`.
    pub kind: Option<String>,
    pub rule_names: Vec<String>,
    pub rule_groups: Vec<String>,
    pub files: Vec<String>,
    pub exclude_alerts: bool,
    /// 0: no pagination.
    pub group_limit: usize,
    pub group_next_token: Option<String>,
}

struct Running {
    group: Arc<Mutex<Group>>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    engine: Arc<Engine>,
    queryable: Arc<dyn Queryable>,
    appendable: Arc<dyn Appendable>,
    opts: RwLock<GroupOptions>,
    groups: Mutex<Vec<Running>>,
    notifier: Notifier,
    owner: RwLock<Option<GroupOwner>>,
}

/// Decides whether this node evaluates a group, given [`Group::hash`] (the same on every node):
/// spreads rule groups over a cluster (rendezvous hashing over live nodes).
pub type GroupOwner = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Runs the rule groups of a configuration.
#[derive(Clone)]
pub struct RuleManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RuleManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleManager")
            .field("groups", &self.inner.groups.lock().len())
            .finish_non_exhaustive()
    }
}

/// Loads and validates every file of `rule_files` (globs), into groups.
pub fn load_groups(cfg: &PrometheusConfig) -> Result<Vec<Group>> {
    let paths = file::expand_globs(&cfg.rule_files)?;
    let mut out = Vec::new();
    for p in paths {
        let f = file::load(&p)?;
        for g in &f.file.groups {
            out.push(Group::new(
                &f.path,
                g,
                cfg.global.evaluation_interval.0,
                cfg.global.rule_query_offset.0,
            ));
        }
    }
    Ok(out)
}

impl RuleManager {
    /// A manager with no groups; call [`RuleManager::apply_config`]. Needs a tokio runtime.
    pub fn new(
        engine: Arc<Engine>,
        queryable: Arc<dyn Queryable>,
        appendable: Arc<dyn Appendable>,
        opts: GroupOptions,
    ) -> RuleManager {
        RuleManager {
            inner: Arc::new(Inner {
                engine,
                queryable,
                appendable,
                opts: RwLock::new(opts),
                groups: Mutex::new(Vec::new()),
                notifier: Notifier::start(Vec::new()),
                owner: RwLock::new(None),
            }),
        }
    }

    /// Evaluate only the groups `owner` accepts (checked before every evaluation). A group that
    /// moves here restores its alerts' `for` state from `ALERTS_FOR_STATE`, which the previous
    /// owner wrote to the shared storage, so a firing alert stays firing.
    pub fn set_owner(&self, owner: Option<GroupOwner>) {
        *self.inner.owner.write() = owner;
    }

    pub fn notifier(&self) -> &Notifier {
        &self.inner.notifier
    }

    /// Loads the configuration's rule files and Alertmanagers and (re)starts the groups. Groups
    /// with the same file and name keep their alert state. On error nothing changes.
    pub fn apply_config(&self, cfg: &PrometheusConfig, external_url: &str) -> Result<()> {
        let new_groups = load_groups(cfg)?;
        let targets = notifier::targets_from_config(&cfg.alerting).map_err(Error::Other)?;
        self.inner.notifier.set_targets(targets);
        {
            let mut o = self.inner.opts.write();
            o.external_labels = cfg
                .global
                .external_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            o.external_url = external_url.to_string();
        }
        let mut running = self.inner.groups.lock();
        let old: Vec<Running> = std::mem::take(&mut *running);
        let mut old_groups = Vec::new();
        for r in old {
            r.task.abort();
            old_groups.push(r.group);
        }
        let now = tidemark_model::time::now_millis();
        for mut g in new_groups {
            if let Some(o) = old_groups.iter().find(|o| {
                let o = o.lock();
                o.name == g.name && o.file == g.file
            }) {
                g.copy_state(&o.lock());
            }
            let group = Arc::new(Mutex::new(g));
            let task = tokio::spawn(run_group(self.inner.clone(), group.clone()));
            running.push(Running { group, task });
        }
        // Groups that disappeared: mark their output stale.
        for o in old_groups {
            let mut o = o.lock();
            if !running.iter().any(|r| {
                let r = r.group.lock();
                r.name == o.name && r.file == o.file
            }) {
                o.mark_all_stale(self.inner.appendable.as_ref(), now);
            }
        }
        info!(groups = running.len(), "rule groups loaded");
        Ok(())
    }

    /// Stops every group.
    pub fn stop(&self) {
        for r in self.inner.groups.lock().drain(..) {
            r.task.abort();
        }
    }

    fn snapshot(&self) -> Vec<Group> {
        let mut v: Vec<Group> = self
            .inner
            .groups
            .lock()
            .iter()
            .map(|r| r.group.lock().clone())
            .collect();
        v.sort_by(|a, b| (&a.file, &a.name).cmp(&(&b.file, &b.name)));
        v
    }

    /// `data` of `/api/v1/rules`. Errors name the bad parameter.
    pub fn rules_json(&self, f: &RulesFilter) -> std::result::Result<Json, String> {
        rules_json(&self.snapshot(), f)
    }

    /// `data` of `/api/v1/alerts`.
    pub fn alerts_json(&self) -> Json {
        alerts_json(&self.snapshot())
    }

    /// Own metrics (text format).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let groups = self.snapshot();
        let _ = writeln!(
            out,
            "# HELP tidemark_rule_groups Number of loaded rule groups.\n# TYPE tidemark_rule_groups gauge\ntidemark_rule_groups {}",
            groups.len()
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_rule_group_last_duration_seconds Duration of the last evaluation of the group.\n# TYPE tidemark_rule_group_last_duration_seconds gauge"
        );
        for g in &groups {
            let _ = writeln!(
                out,
                "tidemark_rule_group_last_duration_seconds{{rule_group=\"{}\"}} {}",
                escape(&format!("{};{}", g.file, g.name)),
                g.evaluation_time
            );
        }
        self.inner.notifier.render_metrics(out);
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

async fn run_group(inner: Arc<Inner>, group: Arc<Mutex<Group>>) {
    let (interval, first) = {
        let g = group.lock();
        let now = tidemark_model::time::now_millis();
        let mut next = g.eval_timestamp(now);
        if next <= g.last_evaluation || next < now {
            next += g.interval_ms;
        }
        (g.interval_ms, next)
    };
    let mut next = first;
    loop {
        let now = tidemark_model::time::now_millis();
        if next > now {
            tokio::time::sleep(Duration::from_millis((next - now) as u64)).await;
        }
        let ts = next;
        let owned = {
            let owner = inner.owner.read().clone();
            match owner {
                Some(f) => {
                    let h = group.lock().hash();
                    f(h)
                }
                None => true,
            }
        };
        if !owned {
            group.lock().release();
            next += interval;
            let now = tidemark_model::time::now_millis();
            if next <= now {
                next += ((now - next) / interval + 1) * interval;
            }
            continue;
        }
        let inner2 = inner.clone();
        let group2 = group.clone();
        let res = tokio::task::spawn_blocking(move || {
            let opts = inner2.opts.read().clone();
            let ctx = EvalContext {
                engine: &inner2.engine,
                queryable: inner2.queryable.as_ref(),
                appendable: inner2.appendable.as_ref(),
                opts: &opts,
            };
            // Evaluate a copy and put it back: the group's lock is never held across the
            // evaluation, which may wait on storage (in a cluster, on other nodes) — API
            // handlers (`/api/v1/rules`, `/alerts`, `/metrics`) lock groups from async tasks,
            // and blocking them behind a long evaluation starved the runtime that evaluation
            // itself was waiting on (a node stalled for good).
            let mut g = group2.lock().clone();
            g.eval(&ctx, ts);
            let exprs: Vec<(String, String)> = g
                .rules
                .iter()
                .filter(|r| r.is_alert())
                .map(|r| (r.name().to_string(), r.def.expr.clone()))
                .collect();
            let alerts = g.alerts_to_send(ts, &opts);
            *group2.lock() = g;
            alerts
                .into_iter()
                .map(|a| {
                    let name = a.labels.get("alertname").unwrap_or("").to_string();
                    let expr = exprs
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, e)| e.as_str())
                        .unwrap_or("");
                    AmAlert::from_alert(&a, notifier::generator_url(&opts.external_url, expr))
                })
                .collect::<Vec<_>>()
        })
        .await;
        match res {
            Ok(alerts) => inner.notifier.send(alerts),
            Err(e) => warn!(error = %e, "rule group evaluation task failed"),
        }
        // Next aligned slot after now (missed slots are skipped, as Prometheus does).
        let now = tidemark_model::time::now_millis();
        next += interval;
        if next <= now {
            let missed = (now - next) / interval + 1;
            warn!(
                missed,
                "rule group evaluation fell behind, skipping iterations"
            );
            next += missed * interval;
        }
    }
}

fn rfc3339(ms: i64) -> String {
    if ms == 0 {
        return "0001-01-01T00:00:00Z".to_string();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, the format of alert values in the API.
fn format_value(v: f64) -> String {
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
    let s = format!("{v:e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let x: i32 = e.parse().unwrap_or(0);
            format!("{m}e{}{:02}", if x < 0 { '-' } else { '+' }, x.abs())
        }
        None => s,
    }
}

fn alert_json(a: &Alert) -> Json {
    let mut j = json!({
        "labels": labels_json(&a.labels),
        "annotations": a.annotations,
        "state": a.state.as_str(),
        "activeAt": rfc3339(a.active_at),
        "value": format_value(a.value),
    });
    if let Some(k) = a.keep_firing_since {
        j["keepFiringSince"] = json!(rfc3339(k));
    }
    j
}

fn labels_json(l: &tidemark_model::Labels) -> Json {
    Json::Object(
        l.iter()
            .map(|x| (x.name.to_string(), Json::String(x.value.to_string())))
            .collect(),
    )
}

fn active_alerts(r: &Rule) -> Vec<&Alert> {
    r.alerts()
        .into_iter()
        .filter(|a| a.state != AlertState::Inactive)
        .collect()
}

fn rule_json(r: &Rule, exclude_alerts: bool) -> Json {
    let labels: serde_json::Map<String, Json> = r
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Json::String(v.clone())))
        .collect();
    let mut j = json!({
        "name": r.name(),
        "query": r.def.expr,
        "labels": labels,
        "health": r.health.health(),
        "evaluationTime": r.health.evaluation_time,
        "lastEvaluation": rfc3339(if r.health.evaluated { r.health.last_evaluation } else { 0 }),
    });
    if let Some(e) = &r.health.last_error {
        j["lastError"] = json!(e);
    }
    if r.is_alert() {
        j["type"] = json!("alerting");
        j["state"] = json!(r.state().as_str());
        j["duration"] = json!(r.def.for_.map(|d| d.0).unwrap_or(0) as f64 / 1000.0);
        j["keepFiringFor"] = json!(r.def.keep_firing_for.map(|d| d.0).unwrap_or(0) as f64 / 1000.0);
        j["annotations"] = json!(r.def.annotations);
        if !exclude_alerts {
            j["alerts"] = Json::Array(active_alerts(r).into_iter().map(alert_json).collect());
        }
    } else {
        j["type"] = json!("recording");
    }
    j
}

/// The pagination token of a group: a stable hash of file and name.
pub fn group_token(g: &Group) -> String {
    format!("{:016x}", g.hash())
}

/// `/api/v1/rules` over a set of groups.
pub fn rules_json(groups: &[Group], f: &RulesFilter) -> std::result::Result<Json, String> {
    let filtering = f.kind.is_some()
        || !f.rule_names.is_empty()
        || !f.rule_groups.is_empty()
        || !f.files.is_empty();
    let mut started = f.group_next_token.is_none();
    if let Some(t) = &f.group_next_token
        && !groups.iter().any(|g| &group_token(g) == t)
    {
        return Err("invalid group_next_token".to_string());
    }
    let mut out = Vec::new();
    let mut next_token = None;
    for g in groups {
        if !started {
            if f.group_next_token.as_deref() == Some(group_token(g).as_str()) {
                started = true;
            } else {
                continue;
            }
        }
        if !f.rule_groups.is_empty() && !f.rule_groups.contains(&g.name) {
            continue;
        }
        if !f.files.is_empty() && !f.files.contains(&g.file) {
            continue;
        }
        let rules: Vec<Json> = g
            .rules
            .iter()
            .filter(|r| match f.kind.as_deref() {
                Some("alert") => r.is_alert(),
                Some("record") => !r.is_alert(),
                _ => true,
            })
            .filter(|r| f.rule_names.is_empty() || f.rule_names.iter().any(|n| n == r.name()))
            .map(|r| rule_json(r, f.exclude_alerts))
            .collect();
        if filtering && rules.is_empty() {
            continue;
        }
        if f.group_limit > 0 && out.len() >= f.group_limit {
            next_token = Some(group_token(g));
            break;
        }
        out.push(json!({
            "name": g.name,
            "file": g.file,
            "rules": rules,
            "interval": g.interval_ms as f64 / 1000.0,
            "limit": g.limit,
            "evaluationTime": g.evaluation_time,
            "lastEvaluation": rfc3339(g.last_evaluation),
        }));
    }
    let mut res = json!({ "groups": out });
    if let Some(t) = next_token {
        res["groupNextToken"] = json!(t);
    }
    Ok(res)
}

/// `/api/v1/alerts` over a set of groups.
pub fn alerts_json(groups: &[Group]) -> Json {
    let mut alerts = Vec::new();
    for g in groups {
        for r in &g.rules {
            alerts.extend(active_alerts(r).into_iter().map(alert_json));
        }
    }
    json!({ "alerts": alerts })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<Group> {
        let f = file::parse(
            "groups:\n- name: a\n  rules:\n  - record: r1\n    expr: up\n  - alert: A1\n    expr: up == 0\n    for: 1m\n- name: b\n  rules:\n  - alert: B1\n    expr: vector(1)\n- name: c\n  rules:\n  - record: r2\n    expr: up\n",
            "f.yml",
        )
        .unwrap();
        f.groups
            .iter()
            .map(|g| Group::new("f.yml", g, 60_000, 0))
            .collect()
    }

    #[test]
    fn rules_filters_and_pagination() {
        let gs = groups();
        let all = rules_json(&gs, &RulesFilter::default()).unwrap();
        assert_eq!(all["groups"].as_array().unwrap().len(), 3);
        assert_eq!(all["groups"][0]["rules"][1]["type"], "alerting");
        assert_eq!(all["groups"][0]["rules"][1]["duration"], 60.0);
        assert_eq!(all["groups"][0]["rules"][0]["health"], "unknown");
        let alerts = rules_json(
            &gs,
            &RulesFilter {
                kind: Some("alert".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let names: Vec<&str> = alerts["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        let by_name = rules_json(
            &gs,
            &RulesFilter {
                rule_names: vec!["r2".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(by_name["groups"][0]["name"], "c");
        let page1 = rules_json(
            &gs,
            &RulesFilter {
                group_limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(page1["groups"].as_array().unwrap().len(), 2);
        let tok = page1["groupNextToken"].as_str().unwrap().to_string();
        let page2 = rules_json(
            &gs,
            &RulesFilter {
                group_limit: 2,
                group_next_token: Some(tok),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(page2["groups"].as_array().unwrap().len(), 1);
        assert_eq!(page2["groups"][0]["name"], "c");
        assert!(page2.get("groupNextToken").is_none());
        assert!(
            rules_json(
                &gs,
                &RulesFilter {
                    group_next_token: Some("zz".into()),
                    ..Default::default()
                }
            )
            .is_err()
        );
        let ex = rules_json(
            &gs,
            &RulesFilter {
                exclude_alerts: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(ex["groups"][0]["rules"][1].get("alerts").is_none());
    }

    #[test]
    fn value_format_is_go_e() {
        assert_eq!(format_value(1.0), "1e+00");
        assert_eq!(format_value(0.25), "2.5e-01");
        assert_eq!(format_value(12345.0), "1.2345e+04");
    }
}
