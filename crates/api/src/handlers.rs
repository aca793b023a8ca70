//! Handlers of the Prometheus API v1 JSON endpoints, the status pages, lifecycle, admin and the
//! health endpoints. Every storage call and every query runs on a blocking thread.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tidemark_model::{Labels, METRIC_NAME, MatchType, Matcher, Metadata};
use tidemark_promql::{MaxSourceResolution, QueryParams};
use tidemark_storage::{Queryable, SelectHints};

use crate::body::read_body;
use crate::error::{ApiError, ApiResult, ErrorType};
use crate::json::{self, push_exemplar, push_labels, push_str};
use crate::params::{MAX_TIME_MS, MIN_TIME_MS, Params};
use crate::providers::{HeadStats, Stat, TsdbStatus};
use crate::selectors::{extract_selectors, parse_matches};
use crate::state::AppState;

/// Parameters from the URL and, for form-encoded POST/PUT, from the body.
impl FromRequest<AppState> for Params {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let is_form = (parts.method == Method::POST || parts.method == Method::PUT)
            && parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let form = if is_form {
            let b = read_body(
                &parts.headers,
                body,
                state.opts.max_request_body_bytes,
                state.opts.body_read_timeout,
            )
            .await
            .map_err(|e| ApiError::bad_data(e.to_string()).into_response())?;
            Some(b)
        } else {
            None
        };
        Ok(Params::from_parts(parts.uri.query(), form.as_deref()))
    }
}

/// Runs `f` on a blocking thread inside the request's tracing span.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
        .await
        .map_err(|e| ApiError::internal(format!("request task failed: {e}")))?
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"status":"success","data":<data as JSON>}` with warnings.
pub(crate) fn success<T: Serialize + ?Sized>(data: &T, warnings: &[String]) -> ApiResult<Response> {
    let d = serde_json::to_string(data)
        .map_err(|e| ApiError::internal(format!("encoding response: {e}")))?;
    Ok(json_response(
        StatusCode::OK,
        json::success_body(&d, warnings, &[]),
    ))
}

fn success_raw(data: &str, warnings: &[String]) -> Response {
    json_response(StatusCode::OK, json::success_body(data, warnings, &[]))
}

fn now_ms() -> i64 {
    tidemark_model::time::now_millis()
}

fn query_params(p: &Params) -> ApiResult<QueryParams> {
    let timeout = p
        .duration("timeout")?
        .filter(|&ms| ms > 0)
        .map(|ms| Duration::from_millis(ms as u64));
    let lookback_delta_ms = p.duration("lookback_delta")?;
    let limit = p.limit("limit")?;
    // Thanos' parameter: auto (the planner's rule), raw, or the coarsest resolution (5m, 1h).
    let max_source_resolution = p
        .get_nonempty("max_source_resolution")
        .map(MaxSourceResolution::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_param("max_source_resolution", e))?;
    Ok(QueryParams {
        timeout,
        lookback_delta_ms,
        limit: (limit > 0).then_some(limit),
        stats: p.get_nonempty("stats").is_some(),
        max_source_resolution,
    })
}

fn query_response(r: tidemark_promql::QueryResult) -> Response {
    let data = json::query_data(&r.value, r.stats.as_ref());
    json_response(
        StatusCode::OK,
        json::success_body(&data, &r.warnings, &r.infos),
    )
}

fn count_query(state: &AppState, kind: &'static str, r: &ApiResult<tidemark_promql::QueryResult>) {
    let outcome = match r {
        Ok(_) => "success",
        Err(e) => e.kind.as_str(),
    };
    state.metrics.query(kind, outcome);
}

/// `GET|POST /api/v1/query`
pub(crate) async fn query(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let expr = p.get("query").unwrap_or_default().to_string();
    let t = p.time_or("time", now_ms())?;
    let qp = query_params(&p)?;
    let st = state.clone();
    let r = blocking(move || Ok(st.engine.instant_query(&*st.queryable, &expr, t, &qp)?)).await;
    count_query(&state, "instant", &r);
    Ok(query_response(r?))
}

/// `GET|POST /api/v1/query_range`
pub(crate) async fn query_range(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let expr = p.get("query").unwrap_or_default().to_string();
    let start = parse_required_time(&p, "start")?;
    let end = parse_required_time(&p, "end")?;
    if end < start {
        return Err(ApiError::invalid_param(
            "end",
            "end timestamp must not be before start time",
        ));
    }
    let step = match p.duration("step")? {
        Some(s) => s,
        None => {
            return Err(ApiError::invalid_param(
                "step",
                "cannot parse \"\" to a valid duration",
            ));
        }
    };
    if step <= 0 {
        return Err(ApiError::invalid_param(
            "step",
            "zero or negative query resolution step widths are not accepted. Try a positive integer",
        ));
    }
    let max_points = state.engine.options().max_points_per_series as i64;
    if (end - start) / step > max_points {
        return Err(ApiError::bad_data(format!(
            "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
            group_thousands(max_points)
        )));
    }
    let qp = query_params(&p)?;
    let st = state.clone();
    let r = blocking(move || {
        Ok(st
            .engine
            .range_query(&*st.queryable, &expr, start, end, step, &qp)?)
    })
    .await;
    count_query(&state, "range", &r);
    Ok(query_response(r?))
}

fn group_thousands(n: i64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn parse_required_time(p: &Params, name: &str) -> ApiResult<i64> {
    let s = p.get(name).unwrap_or_default();
    crate::params::parse_time(s).map_err(|e| ApiError::invalid_param(name, e))
}

/// `GET|POST /api/v1/format_query`
pub(crate) async fn format_query(p: Params) -> ApiResult<Response> {
    let expr = p.get("query").unwrap_or_default();
    let f = tidemark_promql::format_query(expr)?;
    success(&f, &[])
}

fn matchers_param(p: &Params) -> ApiResult<Vec<Vec<Matcher>>> {
    parse_matches(&p.get_all("match[]"))
}

fn truncated(limit: usize, n: usize) -> Vec<String> {
    if limit > 0 && n > limit {
        vec!["results truncated due to limit".to_string()]
    } else {
        Vec::new()
    }
}

/// `GET|POST /api/v1/series`
pub(crate) async fn series(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let sets = matchers_param(&p)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    let limit = p.limit("limit")?;
    let st = state.clone();
    let found = blocking(move || {
        let q = st.queryable.querier(start, end)?;
        let hints = SelectHints {
            start,
            end,
            func: Some("series".to_string()),
            limit: if limit > 0 { limit + 1 } else { 0 },
            ..Default::default()
        };
        // One matcher set: the storage's sorted, unique answer is used as it is. Several: their
        // union, sorted and deduplicated once (cheaper than a tree of label sets).
        let mut all: Vec<Labels> = Vec::new();
        for set in &sets {
            for s in q.select(true, Some(&hints), set) {
                all.push(s?.labels().clone());
            }
        }
        if sets.len() > 1 {
            all.sort_unstable();
            all.dedup();
        }
        Ok(all)
    })
    .await?;
    let warnings = truncated(limit, found.len());
    let mut out = String::from("[");
    for (i, l) in found.iter().enumerate() {
        if limit > 0 && i >= limit {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        push_labels(&mut out, l);
    }
    out.push(']');
    Ok(success_raw(&out, &warnings))
}

fn string_list(items: &[String], limit: usize) -> String {
    let mut out = String::from("[");
    for (i, s) in items.iter().enumerate() {
        if limit > 0 && i >= limit {
            break;
        }
        if i > 0 {
            out.push(',');
        }
        push_str(&mut out, s);
    }
    out.push(']');
    out
}

fn union_sorted(lists: Vec<Vec<String>>) -> Vec<String> {
    let set: BTreeSet<String> = lists.into_iter().flatten().collect();
    set.into_iter().collect()
}

/// `GET|POST /api/v1/labels`
pub(crate) async fn labels(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let sets = matchers_param(&p)?;
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    let limit = p.limit("limit")?;
    let st = state.clone();
    let names = blocking(move || {
        let q = st.queryable.querier(start, end)?;
        let inner = if limit > 0 { limit + 1 } else { 0 };
        if sets.is_empty() {
            return Ok(q.label_names(&[], inner)?);
        }
        let lists = sets
            .iter()
            .map(|s| q.label_names(s, inner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(union_sorted(lists))
    })
    .await?;
    Ok(success_raw(
        &string_list(&names, limit),
        &truncated(limit, names.len()),
    ))
}

/// Undoes Prometheus' `U__` label name escaping (`U__` prefix, `__` for `_`, `_<hex>_` for any
/// other character); names without the prefix, or badly escaped, are returned unchanged.
pub(crate) fn unescape_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::new();
    let mut it = rest.chars().peekable();
    while let Some(c) = it.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        if it.peek() == Some(&'_') {
            it.next();
            out.push('_');
            continue;
        }
        let mut hex = String::new();
        loop {
            match it.next() {
                Some('_') => break,
                Some(h) if h.is_ascii_hexdigit() && hex.len() < 8 => hex.push(h),
                _ => return name.to_string(),
            }
        }
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(ch) => out.push(ch),
            None => return name.to_string(),
        }
    }
    out
}

/// `GET /api/v1/label/<name>/values`
pub(crate) async fn label_values(
    State(state): State<AppState>,
    Path(name): Path<String>,
    p: Params,
) -> ApiResult<Response> {
    let name = unescape_name(&name);
    if name.is_empty() {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let sets = matchers_param(&p)?;
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    let limit = p.limit("limit")?;
    let st = state.clone();
    let values = blocking(move || {
        let q = st.queryable.querier(start, end)?;
        let inner = if limit > 0 { limit + 1 } else { 0 };
        if sets.is_empty() {
            return Ok(q.label_values(&name, &[], inner)?);
        }
        let lists = sets
            .iter()
            .map(|s| q.label_values(&name, s, inner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(union_sorted(lists))
    })
    .await?;
    Ok(success_raw(
        &string_list(&values, limit),
        &truncated(limit, values.len()),
    ))
}

fn signed_param(p: &Params, name: &str) -> ApiResult<i64> {
    match p.get_nonempty(name) {
        None => Ok(-1),
        Some(s) => s
            .parse::<i64>()
            .map_err(|_| ApiError::bad_data(format!("{name} must be a number"))),
    }
}

/// `GET /api/v1/metadata`: scraped metadata (targets provider) and remote-written metadata.
pub(crate) async fn metadata(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let limit = signed_param(&p, "limit")?;
    let per_metric = signed_param(&p, "limit_per_metric")?;
    let metric = p.get_nonempty("metric").map(str::to_string);
    let mut all: Vec<(String, Metadata)> = match state.stored_extras.clone() {
        Some(s) => blocking(move || Ok(s.metadata()?)).await?,
        None => state.metadata.all(),
    };
    if let Some(t) = &state.targets {
        all.extend(t.metadata());
    }
    let mut res: BTreeMap<String, Vec<Metadata>> = BTreeMap::new();
    for (name, m) in all {
        if metric.as_ref().is_some_and(|x| *x != name) {
            continue;
        }
        let entry = res.entry(name).or_default();
        if !entry.contains(&m) && (per_metric < 0 || (entry.len() as i64) < per_metric) {
            entry.push(m);
        }
    }
    if limit >= 0 {
        while res.len() as i64 > limit {
            res.pop_last();
        }
    }
    success(&res, &[])
}

/// `GET|POST /api/v1/query_exemplars`
pub(crate) async fn query_exemplars(
    State(state): State<AppState>,
    p: Params,
) -> ApiResult<Response> {
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    if end < start {
        return Err(ApiError::invalid_param(
            "end",
            "end timestamp must not be before start timestamp",
        ));
    }
    let sets = extract_selectors(p.get("query").unwrap_or_default())?;
    let found = match state.stored_extras.clone() {
        Some(s) => blocking(move || Ok(s.exemplars(&sets, start, end)?)).await?,
        None => state.exemplars.query(&sets, start, end),
    };
    let mut out = String::from("[");
    for (i, (series, exemplars)) in found.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"seriesLabels\":");
        push_labels(&mut out, series);
        out.push_str(",\"exemplars\":[");
        for (j, e) in exemplars.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_exemplar(&mut out, e);
        }
        out.push_str("]}");
    }
    out.push(']');
    Ok(success_raw(&out, &[]))
}

/// `GET /api/v1/status/buildinfo`
pub(crate) async fn buildinfo(State(state): State<AppState>) -> ApiResult<Response> {
    success(&state.opts.build_info, &[])
}

/// `GET /api/v1/status/config`
pub(crate) async fn config(State(state): State<AppState>) -> ApiResult<Response> {
    let yaml = state.config_text.as_ref().map(|f| f()).unwrap_or_default();
    success(&serde_json::json!({ "yaml": yaml }), &[])
}

/// `GET /api/v1/status/flags`
pub(crate) async fn flags(State(state): State<AppState>) -> ApiResult<Response> {
    success(&*state.flags, &[])
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// `GET /api/v1/status/runtimeinfo` (Prometheus' keys; Go-specific ones carry the nearest
/// Rust meaning: `goroutineCount` is the number of threads, `GOMAXPROCS` the available cores).
pub(crate) async fn runtimeinfo(State(state): State<AppState>) -> ApiResult<Response> {
    let (ok, at) = *state.last_reload.lock();
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    let data = serde_json::json!({
        "startTime": rfc3339(state.start_time),
        "CWD": std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
        "reloadConfigSuccess": ok,
        "lastConfigTime": rfc3339(at),
        "corruptionCount": 0,
        "goroutineCount": threads,
        "GOMAXPROCS": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "GOMEMLIMIT": i64::MAX,
        "GOGC": "",
        "GODEBUG": "",
        "storageRetention": state.opts.storage_retention,
    });
    success(&data, &[])
}

/// `GET /api/v1/status/walreplay`: the log is replayed before the API starts serving.
pub(crate) async fn walreplay() -> ApiResult<Response> {
    success(
        &serde_json::json!({ "min": 0, "max": 0, "current": 0 }),
        &[],
    )
}

/// `GET /api/v1/status/tsdb`
pub(crate) async fn tsdb_status(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let limit = match p.limit("limit")? {
        0 if p.get_nonempty("limit").is_some() => {
            return Err(ApiError::bad_data("limit must be a positive number"));
        }
        0 => 10,
        n => n,
    };
    let st = state.clone();
    let status = blocking(move || match &st.admin {
        Some(a) => Ok(a.status(limit)?),
        None => Ok(compute_tsdb_status(&*st.queryable, limit)?),
    })
    .await?;
    success(&status, &[])
}

fn top(map: HashMap<String, u64>, limit: usize) -> Vec<Stat> {
    let mut v: Vec<Stat> = map
        .into_iter()
        .map(|(name, value)| Stat { name, value })
        .collect();
    v.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
    v.truncate(limit);
    v
}

/// Cardinality statistics computed by reading every series' labels (used when the binary gives
/// no [`crate::TsdbAdmin`], e.g. over `MemStorage`).
pub(crate) fn compute_tsdb_status(
    q: &dyn Queryable,
    limit: usize,
) -> Result<TsdbStatus, tidemark_storage::Error> {
    let querier = q.querier(MIN_TIME_MS, MAX_TIME_MS)?;
    let all = Matcher::new(MatchType::Regex, METRIC_NAME, ".+")
        .map_err(|e| tidemark_storage::Error::Other(e.to_string()))?;
    let mut by_metric: HashMap<String, u64> = HashMap::new();
    let mut values: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut pairs: HashMap<String, u64> = HashMap::new();
    let mut head = HeadStats {
        min_time: i64::MAX,
        max_time: i64::MIN,
        ..Default::default()
    };
    for s in querier.select(false, None, std::slice::from_ref(&all)) {
        let s = s?;
        head.num_series += 1;
        let l: &Labels = s.labels();
        if let Some(n) = l.metric_name() {
            *by_metric.entry(n.to_string()).or_default() += 1;
        }
        for x in l.iter() {
            values
                .entry(x.name.to_string())
                .or_default()
                .insert(x.value.to_string());
            *pairs.entry(format!("{}={}", x.name, x.value)).or_default() += 1;
        }
        let mut it = s.iter();
        while it.next() {
            let t = it.at().t;
            head.min_time = head.min_time.min(t);
            head.max_time = head.max_time.max(t);
        }
    }
    if head.num_series == 0 {
        head.min_time = 0;
        head.max_time = 0;
    }
    head.num_label_pairs = pairs.len() as u64;
    let count_by_name: HashMap<String, u64> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.len() as u64))
        .collect();
    let mem_by_name: HashMap<String, u64> = values
        .iter()
        .map(|(k, v)| (k.clone(), v.iter().map(|x| x.len() as u64).sum()))
        .collect();
    Ok(TsdbStatus {
        head_stats: head,
        series_count_by_metric_name: top(by_metric, limit),
        label_value_count_by_label_name: top(count_by_name, limit),
        memory_in_bytes_by_label_name: top(mem_by_name, limit),
        series_count_by_label_value_pair: top(pairs, limit),
        tidemark: None,
    })
}

/// `GET /api/v1/targets`
pub(crate) async fn targets(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let filter = p
        .get_nonempty("state")
        .unwrap_or("any")
        .to_ascii_lowercase();
    let data = match &state.targets {
        Some(t) => t.targets(&filter, p.get_nonempty("scrapePool")),
        None => {
            serde_json::json!({ "activeTargets": [], "droppedTargets": [], "droppedTargetCounts": {} })
        }
    };
    success(&data, &[])
}

/// `GET /api/v1/targets/metadata`
pub(crate) async fn targets_metadata(
    State(state): State<AppState>,
    p: Params,
) -> ApiResult<Response> {
    let limit = p.limit("limit")?;
    let data = match &state.targets {
        Some(t) => t.targets_metadata(
            p.get_nonempty("match_target"),
            p.get_nonempty("metric"),
            limit,
        ),
        None => serde_json::json!([]),
    };
    success(&data, &[])
}

/// `GET /api/v1/rules`
pub(crate) async fn rules(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let kind = p.get_nonempty("type").map(str::to_ascii_lowercase);
    if let Some(k) = &kind
        && k != "alert"
        && k != "record"
    {
        return Err(ApiError::invalid_param(
            "type",
            format!("not supported value {k:?}"),
        ));
    }
    let exclude_alerts = match p.get_nonempty("exclude_alerts") {
        None => false,
        Some(s) => s.parse::<bool>().map_err(|_| {
            ApiError::invalid_param("exclude_alerts", format!("cannot parse {s:?} as a boolean"))
        })?,
    };
    let q = crate::RulesQuery {
        kind,
        rule_names: p
            .get_all("rule_name[]")
            .into_iter()
            .map(str::to_string)
            .collect(),
        rule_groups: p
            .get_all("rule_group[]")
            .into_iter()
            .map(str::to_string)
            .collect(),
        files: p
            .get_all("file[]")
            .into_iter()
            .map(str::to_string)
            .collect(),
        exclude_alerts,
        group_limit: p.limit("group_limit")?,
        group_next_token: p.get_nonempty("group_next_token").map(str::to_string),
    };
    if q.group_next_token.is_some() && q.group_limit == 0 {
        return Err(ApiError::invalid_param(
            "group_next_token",
            "group_limit needs to be present in order to paginate over the groups",
        ));
    }
    let data = match &state.rules {
        Some(r) => r.rules_query(&q).map_err(ApiError::bad_data)?,
        None => serde_json::json!({ "groups": [] }),
    };
    success(&data, &[])
}

/// `GET /api/v1/alerts`
pub(crate) async fn alerts(State(state): State<AppState>) -> ApiResult<Response> {
    let data = match &state.rules {
        Some(r) => r.alerts(),
        None => serde_json::json!({ "alerts": [] }),
    };
    success(&data, &[])
}

/// `GET /api/v1/alertmanagers`
pub(crate) async fn alertmanagers(State(state): State<AppState>) -> ApiResult<Response> {
    let data = match &state.rules {
        Some(r) => r.alertmanagers(),
        None => serde_json::json!({ "activeAlertmanagers": [], "droppedAlertmanagers": [] }),
    };
    success(&data, &[])
}

fn admin(state: &AppState) -> ApiResult<std::sync::Arc<dyn crate::TsdbAdmin>> {
    if !state.opts.enable_admin_api {
        return Err(ApiError::unavailable("admin APIs disabled"));
    }
    state
        .admin
        .clone()
        .ok_or_else(|| ApiError::unavailable("admin APIs are not supported by this storage"))
}

/// `POST|PUT /api/v1/admin/tsdb/delete_series`
pub(crate) async fn delete_series(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let a = admin(&state)?;
    let sets = matchers_param(&p)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let start = p.time_or("start", MIN_TIME_MS)?;
    let end = p.time_or("end", MAX_TIME_MS)?;
    blocking(move || Ok(a.delete_series(&sets, start, end)?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST|PUT /api/v1/admin/tsdb/clean_tombstones`
pub(crate) async fn clean_tombstones(State(state): State<AppState>) -> ApiResult<Response> {
    let a = admin(&state)?;
    blocking(move || Ok(a.clean_tombstones()?)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST|PUT /api/v1/admin/tsdb/snapshot`
pub(crate) async fn snapshot(State(state): State<AppState>, p: Params) -> ApiResult<Response> {
    let a = admin(&state)?;
    let skip_head = match p.get_nonempty("skip_head") {
        None => false,
        Some(v) => parse_bool(v).ok_or_else(|| {
            ApiError::bad_data(format!(
                "unable to parse boolean 'skip_head' argument: {v:?}"
            ))
        })?,
    };
    let name = blocking(move || Ok(a.snapshot(skip_head)?)).await?;
    success(&serde_json::json!({ "name": name }), &[])
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `GET /metrics`: Tidemark's own metrics.
pub(crate) async fn own_metrics(State(state): State<AppState>) -> Response {
    let mut out = String::with_capacity(8192);
    state.metrics.render(&mut out);
    for m in &state.metrics_sources {
        m.render(&mut out);
    }
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// `GET /-/healthy`
pub(crate) async fn healthy() -> &'static str {
    "Tidemark Server is Healthy.\n"
}

/// `GET /-/ready`
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "Tidemark Server is Ready.\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n").into_response()
    }
}

/// `POST|PUT /-/reload`
pub(crate) async fn reload(State(state): State<AppState>) -> Response {
    if !state.opts.enable_lifecycle {
        return (StatusCode::FORBIDDEN, "Lifecycle API is not enabled.\n").into_response();
    }
    let Some(r) = state.reloader.clone() else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to reload config: no reloader configured\n",
        )
            .into_response();
    };
    let res = blocking(move || r.reload().map_err(ApiError::internal)).await;
    *state.last_reload.lock() = (res.is_ok(), SystemTime::now());
    match res {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => {
            tracing::warn!(error = %e.message, "configuration reload failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to reload config: {}\n", e.message),
            )
                .into_response()
        }
    }
}

/// `GET /`
pub(crate) async fn root() -> Response {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Tidemark {}: a Prometheus-compatible time-series database.",
        env!("CARGO_PKG_VERSION")
    );
    s.push_str(
        "Prometheus HTTP API v1 at /api/v1/ (use it as a Prometheus data source in Grafana).\n",
    );
    s.into_response()
}

impl From<ErrorType> for StatusCode {
    fn from(t: ErrorType) -> StatusCode {
        t.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape() {
        assert_eq!(unescape_name("job"), "job");
        assert_eq!(unescape_name("U__my_2e_metric"), "my.metric");
        assert_eq!(unescape_name("U__a__b"), "a_b");
        assert_eq!(unescape_name("U__bad_zz_"), "U__bad_zz_");
        assert_eq!(group_thousands(11000), "11,000");
        assert_eq!(group_thousands(100), "100");
    }
}
