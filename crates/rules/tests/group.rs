//! Group evaluation over the in-memory storage: recording output, staleness markers, alert
//! states with `for` and `keep_firing_for`, ALERTS/ALERTS_FOR_STATE, restore after restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tidemark_model::{Labels, Matcher, is_stale_nan};
use tidemark_promql::{Engine, EngineOptions};
use tidemark_rules::file;
use tidemark_rules::group::{AlertState, EvalContext, Group, GroupOptions};
use tidemark_storage::Queryable;
use tidemark_storage::memory::MemStorage;

fn group(text: &str) -> Group {
    let f = file::parse(text, "t.yml").unwrap();
    assert!(file::validate(&f).is_empty(), "{:?}", file::validate(&f));
    Group::new("t.yml", &f.groups[0], 10_000, 0)
}

fn samples(st: &MemStorage, name: &str) -> Vec<(Labels, Vec<(i64, f64)>)> {
    let q = st.querier(i64::MIN / 2, i64::MAX / 2).unwrap();
    q.select(true, None, &[Matcher::equal("__name__", name)])
        .map(|s| {
            let s = s.unwrap();
            let mut it = s.iter();
            let mut v = Vec::new();
            while it.next() {
                v.push((it.at().t, it.at().v));
            }
            (s.labels().clone(), v)
        })
        .collect()
}

fn l(pairs: &[(&str, &str)]) -> Labels {
    Labels::from_pairs(pairs.iter().copied())
}

#[test]
fn recording_rule_writes_and_marks_stale() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let mut g = group(
        "groups:\n- name: g\n  labels: {team: a}\n  rules:\n  - record: job:x:sum\n    expr: sum by (job) (x)\n    labels: {team: b}\n",
    );
    st.insert(l(&[("__name__", "x"), ("job", "j1"), ("i", "1")]), 0, 1.0);
    st.insert(l(&[("__name__", "x"), ("job", "j1"), ("i", "2")]), 0, 2.0);
    st.insert(l(&[("__name__", "x"), ("job", "j2")]), 0, 5.0);
    g.eval(&ctx, 10_000);
    assert_eq!(g.rules[0].health.health(), "ok");
    let out = samples(&st, "job:x:sum");
    assert_eq!(out.len(), 2);
    assert_eq!(
        out[0].0,
        l(&[("__name__", "job:x:sum"), ("job", "j1"), ("team", "b")])
    );
    assert_eq!(out[0].1, vec![(10_000, 3.0)]);
    // j2 vanishes (its only sample falls out of the 5m lookback): a staleness marker follows.
    g.eval(&ctx, 400_000);
    let out = samples(&st, "job:x:sum");
    let j2 = out
        .iter()
        .find(|(l, _)| l.get("job") == Some("j2"))
        .unwrap();
    assert_eq!(j2.1.len(), 2);
    assert!(is_stale_nan(j2.1[1].1));
    assert_eq!(j2.1[1].0, 400_000);
}

#[test]
fn bad_rule_reports_error_health() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    st.insert(l(&[("__name__", "x"), ("a", "1")]), 0, 1.0);
    st.insert(l(&[("__name__", "x"), ("a", "2")]), 0, 1.0);
    let mut g =
        group("groups:\n- name: g\n  rules:\n  - record: y\n    expr: x\n    labels: {a: same}\n");
    g.eval(&ctx, 1000);
    assert_eq!(g.rules[0].health.health(), "err");
    assert!(
        g.rules[0]
            .health
            .last_error
            .as_deref()
            .unwrap()
            .contains("same labelset")
    );
}

#[test]
fn alert_pending_firing_resolved_keep_firing_and_restore() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let text = "groups:\n- name: g\n  interval: 10s\n  rules:\n  - alert: High\n    expr: x > 10\n    for: 30s\n    keep_firing_for: 20s\n    labels: {severity: page}\n    annotations: {summary: '{{ $labels.i }} at {{ $value }}'}\n";
    let mut g = group(text);
    let series = l(&[("__name__", "x"), ("i", "a")]);
    let mut t = 0;
    let mut states = Vec::new();
    // High for 60s, then low.
    while t <= 120_000 {
        st.insert(series.clone(), t, if t <= 60_000 { 20.0 } else { 1.0 });
        g.eval(&ctx, t);
        states.push(g.rules[0].state());
        t += 10_000;
    }
    use AlertState::*;
    assert_eq!(
        states,
        vec![
            Pending, Pending, Pending, Firing, Firing, Firing, Firing, // 0..60s
            Firing, Firing, // keep_firing_for 20s: 70s, 80s
            Inactive, Inactive, Inactive, Inactive
        ]
    );
    let a = g.rules[0].alerts()[0].clone();
    assert_eq!(
        a.labels,
        l(&[("alertname", "High"), ("i", "a"), ("severity", "page")])
    );
    assert_eq!(a.annotations["summary"], "a at 20");
    assert_eq!(a.resolved_at, Some(90_000));
    let alerts = samples(&st, "ALERTS");
    let firing = alerts
        .iter()
        .find(|(l, _)| l.get("alertstate") == Some("firing"))
        .unwrap();
    assert_eq!(firing.1.first().unwrap(), &(30_000, 1.0));
    assert!(is_stale_nan(firing.1.last().unwrap().1));
    let fs = samples(&st, "ALERTS_FOR_STATE");
    assert_eq!(fs[0].1[0], (0, 0.0));

    // A restart while firing: a fresh group restores activeAt and fires at once.
    let st2 = MemStorage::new();
    let ctx2 = EvalContext {
        engine: &engine,
        queryable: &st2,
        appendable: &st2,
        opts: &opts,
    };
    let mut g1 = group(text);
    for t in (0..=50_000).step_by(10_000) {
        st2.insert(series.clone(), t, 20.0);
        g1.eval(&ctx2, t);
    }
    assert_eq!(g1.rules[0].state(), Firing);
    let mut g2 = group(text); // "restarted" 20s later
    st2.insert(series.clone(), 70_000, 20.0);
    g2.eval(&ctx2, 70_000);
    assert_eq!(
        g2.rules[0].state(),
        Firing,
        "restored alert must not drop to pending"
    );
    assert_eq!(g2.rules[0].alerts()[0].active_at, 0);
    // Without the stored state a fresh group would be pending.
    let st3 = MemStorage::new();
    st3.insert(series.clone(), 70_000, 20.0);
    let ctx3 = EvalContext {
        engine: &engine,
        queryable: &st3,
        appendable: &st3,
        opts: &opts,
    };
    let mut g3 = group(text);
    g3.eval(&ctx3, 70_000);
    assert_eq!(g3.rules[0].state(), Pending);
}

#[test]
fn notifications_resend_and_resolve() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions {
        external_labels: vec![("cluster".into(), "eu".into())],
        ..GroupOptions::default()
    };
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let mut g = group("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: x > 0\n");
    let s = l(&[("__name__", "x")]);
    let mut sent = Vec::new();
    for t in (0..=200_000).step_by(10_000) {
        st.insert(s.clone(), t, if t < 150_000 { 1.0 } else { 0.0 });
        g.eval(&ctx, t);
        for a in g.alerts_to_send(t, &opts) {
            sent.push((t, a.state, a.labels.get("cluster").map(str::to_string)));
        }
    }
    let times: Vec<i64> = sent.iter().map(|x| x.0).collect();
    // first at 0 (no for), resent after >1m, resolved at 150s once.
    assert_eq!(times, vec![0, 70_000, 140_000, 150_000]);
    assert_eq!(sent[3].1, AlertState::Inactive);
    assert_eq!(sent[0].2.as_deref(), Some("eu"));
}

#[test]
fn eval_timestamps_are_aligned() {
    let g = group("groups:\n- name: g\n  interval: 15s\n  rules: []\n");
    let a = g.eval_timestamp(1_000_000);
    let b = g.eval_timestamp(1_000_000 + 15_000);
    assert_eq!(b - a, 15_000);
    assert!(a <= 1_000_000 && a > 1_000_000 - 15_000);
    assert_eq!((a - g.eval_timestamp(a)), 0);
}

#[test]
fn later_rules_see_earlier_output_of_the_same_evaluation() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    st.insert(l(&[("__name__", "x")]), 0, 3.0);
    let mut g = group(
        "groups:\n- name: g\n  rules:\n  - record: y\n    expr: x * 2\n  - alert: Big\n    expr: y > 5\n",
    );
    g.eval(&ctx, 1000);
    assert_eq!(samples(&st, "y")[0].1, vec![(1000, 6.0)]);
    assert_eq!(g.rules[1].state(), AlertState::Firing);
}

#[test]
fn slo_section_generates_rules_that_alert_on_fast_burn() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    let f = file::parse(
        "groups: []\nslos:\n- name: api\n  objective: 99.9\n  error_query: sum(rate(errors_total[{{.window}}]))\n  total_query: sum(rate(requests_total[{{.window}}]))\n",
        "slo.yml",
    )
    .unwrap();
    assert!(file::validate(&f).is_empty(), "{:?}", file::validate(&f));
    let mut g = Group::new("slo.yml", &f.groups[0], 60_000, 0);
    // 10 req/s, 50% errors, for an hour.
    for i in 0..=70 {
        let t = i * 60_000;
        st.insert(l(&[("__name__", "requests_total")]), t, (i * 600) as f64);
        st.insert(l(&[("__name__", "errors_total")]), t, (i * 300) as f64);
    }
    g.eval(&ctx, 3_600_000);
    let ratio = samples(&st, "slo:sli_error:ratio_rate5m");
    assert_eq!(ratio[0].0.get("slo"), Some("api"));
    assert!((ratio[0].1[0].1 - 0.5).abs() < 1e-9);
    let page = g
        .rules
        .iter()
        .find(|r| r.is_alert() && r.labels.get("long_window").map(String::as_str) == Some("1h"))
        .unwrap();
    assert_eq!(page.state(), AlertState::Pending);
    g.eval(&ctx, 3_600_000 + 120_000);
    let page = g
        .rules
        .iter()
        .find(|r| r.is_alert() && r.labels.get("long_window").map(String::as_str) == Some("1h"))
        .unwrap();
    assert_eq!(page.state(), AlertState::Firing);
    assert_eq!(page.alerts()[0].labels.get("severity"), Some("page"));
}

#[test]
fn reload_keeps_alert_state_of_unchanged_rules() {
    let st = MemStorage::new();
    let engine = Engine::new(EngineOptions::default());
    let opts = GroupOptions::default();
    let ctx = EvalContext {
        engine: &engine,
        queryable: &st,
        appendable: &st,
        opts: &opts,
    };
    st.insert(l(&[("__name__", "x")]), 0, 1.0);
    let mut old =
        group("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: x > 0\n    for: 20s\n");
    for t in [0, 10_000, 20_000] {
        g_eval(&mut old, &ctx, t);
    }
    assert_eq!(old.rules[0].state(), AlertState::Firing);
    // New file: an extra rule in front, A's annotations changed.
    let mut new = group(
        "groups:\n- name: g\n  rules:\n  - record: r\n    expr: x\n  - alert: A\n    expr: x > 0\n    for: 20s\n    annotations: {a: b}\n",
    );
    new.copy_state(&old);
    assert_eq!(new.rules[1].state(), AlertState::Firing);
    assert_eq!(new.rules[1].alerts()[0].active_at, 0);
    g_eval(&mut new, &ctx, 30_000);
    assert_eq!(new.rules[1].state(), AlertState::Firing);
    assert_eq!(new.rules[1].alerts()[0].annotations["a"], "b");
}

fn g_eval(g: &mut Group, ctx: &EvalContext<'_>, t: i64) {
    g.eval(ctx, t);
}
