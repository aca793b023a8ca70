//! The Alertmanager client: `POST {scheme}://{target}{path_prefix}/api/v2/alerts` with a JSON
//! array of alerts (labels, annotations, startsAt, endsAt, generatorURL), batches of at most 64,
//! a bounded queue (10000, oldest dropped first, counted) and one sender task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use tidemark_scrape::config::{AlertingConfig, HttpClientConfig};
use tidemark_scrape::{Connection, HttpClient};
use tracing::{debug, warn};

use crate::group::{Alert, AlertState};

/// Queue capacity (Prometheus' `--alertmanager.notification-queue-capacity` default).
pub const QUEUE_CAPACITY: usize = 10_000;
/// Alerts per request.
pub const MAX_BATCH: usize = 64;

/// One alert as Alertmanager's API v2 wants it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AmAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt")]
    pub ends_at: String,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// Prometheus' generator URL: the expression in the graph page.
pub fn generator_url(external_url: &str, expr: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!(
        "{}/graph?g0.expr={q}&g0.tab=1",
        external_url.trim_end_matches('/')
    )
}

impl AmAlert {
    /// From a rule's alert (its external labels already added).
    pub fn from_alert(a: &Alert, generator_url: String) -> AmAlert {
        let ends = match (a.state, a.resolved_at) {
            (AlertState::Inactive, Some(r)) => r,
            _ => a.valid_until,
        };
        AmAlert {
            labels: a
                .labels
                .iter()
                .map(|l| (l.name.to_string(), l.value.to_string()))
                .collect(),
            annotations: a.annotations.clone(),
            starts_at: rfc3339(a.fired_at.unwrap_or(a.active_at)),
            ends_at: rfc3339(ends),
            generator_url,
        }
    }
}

/// One Alertmanager to send to.
#[derive(Debug, Clone)]
pub struct AmTarget {
    /// Full URL of the alerts endpoint.
    pub url: String,
    pub timeout: Duration,
    /// The scrape client configured from the Alertmanager config's `tls_config`, credentials
    /// and `follow_redirects` (one implementation of TLS and auth for both), and its kept-alive
    /// connection.
    client: Arc<HttpClient>,
    conn: Arc<tokio::sync::Mutex<Option<Connection>>>,
}

impl PartialEq for AmTarget {
    fn eq(&self, o: &Self) -> bool {
        self.url == o.url && self.timeout == o.timeout
    }
}

/// The targets of `alerting.alertmanagers` (static configs; `api_version` v2 only).
pub fn targets_from_config(cfg: &AlertingConfig) -> Result<Vec<AmTarget>, String> {
    let mut out = Vec::new();
    for am in &cfg.alertmanagers {
        if !am.file_sd_configs.is_empty() {
            warn!("alertmanagers file_sd_configs are not supported yet; use static_configs");
        }
        if am.scheme != "http" && am.scheme != "https" {
            return Err(format!(
                "alertmanager scheme {:?} is not supported (http or https)",
                am.scheme
            ));
        }
        let client = Arc::new(HttpClient::new(
            &HttpClientConfig {
                basic_auth: am.basic_auth.clone(),
                authorization: am.authorization.clone(),
                bearer_token: am.bearer_token.clone(),
                bearer_token_file: am.bearer_token_file.clone(),
                tls_config: am.tls_config.clone(),
                follow_redirects: am.follow_redirects,
            },
            false,
            0,
        ));
        let prefix = am.path_prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() || prefix.starts_with('/') {
            prefix.to_string()
        } else {
            format!("/{prefix}")
        };
        for sc in &am.static_configs {
            for t in &sc.targets {
                out.push(AmTarget {
                    url: format!("{}://{t}{prefix}/api/v2/alerts", am.scheme),
                    timeout: am.timeout.to_std(),
                    client: client.clone(),
                    conn: Arc::new(tokio::sync::Mutex::new(None)),
                });
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
}

struct Inner {
    queue: Mutex<VecDeque<AmAlert>>,
    targets: Mutex<Vec<AmTarget>>,
    wake: tokio::sync::Notify,
    counters: Counters,
}

/// Queues alerts and sends them to every configured Alertmanager.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("targets", &*self.inner.targets.lock())
            .field("queued", &self.inner.queue.lock().len())
            .finish()
    }
}

impl Notifier {
    /// Starts the sender task on the current tokio runtime.
    pub fn start(targets: Vec<AmTarget>) -> Notifier {
        let inner = Arc::new(Inner {
            queue: Mutex::new(VecDeque::new()),
            targets: Mutex::new(targets),
            wake: tokio::sync::Notify::new(),
            counters: Counters::default(),
        });
        let task_inner = inner.clone();
        tokio::spawn(async move {
            let inner = task_inner;
            loop {
                // The notifier was dropped by everyone else: end the task.
                if Arc::strong_count(&inner) == 1 {
                    return;
                }
                if inner.queue.lock().is_empty() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), inner.wake.notified()).await;
                    continue;
                }
                send_all(&inner).await;
            }
        });
        Notifier { inner }
    }

    /// Replaces the Alertmanager list (on reload).
    pub fn set_targets(&self, targets: Vec<AmTarget>) {
        *self.inner.targets.lock() = targets;
    }

    pub fn targets(&self) -> Vec<AmTarget> {
        self.inner.targets.lock().clone()
    }

    /// Queues alerts; when the queue is full the oldest are dropped (and counted).
    pub fn send(&self, alerts: Vec<AmAlert>) {
        if alerts.is_empty() {
            return;
        }
        {
            let mut q = self.inner.queue.lock();
            q.extend(alerts);
            let over = q.len().saturating_sub(QUEUE_CAPACITY);
            if over > 0 {
                q.drain(..over);
                self.inner
                    .counters
                    .dropped
                    .fetch_add(over as u64, Ordering::Relaxed);
                warn!(
                    dropped = over,
                    "alert notification queue full, dropped oldest alerts"
                );
            }
        }
        self.inner.wake.notify_one();
    }

    pub fn queue_length(&self) -> usize {
        self.inner.queue.lock().len()
    }

    pub fn dropped(&self) -> u64 {
        self.inner.counters.dropped.load(Ordering::Relaxed)
    }

    /// Own metrics in the text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let c = &self.inner.counters;
        let _ = writeln!(
            out,
            "# HELP tidemark_notifications_dropped_total Alerts dropped because the queue was full.\n# TYPE tidemark_notifications_dropped_total counter\ntidemark_notifications_dropped_total {}",
            c.dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_notifications_sent_total Alerts sent to Alertmanagers.\n# TYPE tidemark_notifications_sent_total counter\ntidemark_notifications_sent_total {}",
            c.sent.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_notifications_errors_total Alerts whose sending failed.\n# TYPE tidemark_notifications_errors_total counter\ntidemark_notifications_errors_total {}",
            c.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP tidemark_notifications_queue_length Alerts waiting to be sent.\n# TYPE tidemark_notifications_queue_length gauge\ntidemark_notifications_queue_length {}\n# HELP tidemark_notifications_queue_capacity Capacity of the alert queue.\n# TYPE tidemark_notifications_queue_capacity gauge\ntidemark_notifications_queue_capacity {QUEUE_CAPACITY}",
            self.queue_length()
        );
    }
}

async fn send_all(inner: &Inner) {
    loop {
        let batch: Vec<AmAlert> = {
            let mut q = inner.queue.lock();
            let n = q.len().min(MAX_BATCH);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(&batch) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                warn!(error = %e, "encoding alerts failed");
                continue;
            }
        };
        let targets = inner.targets.lock().clone();
        let mut tasks = Vec::new();
        for t in targets {
            let body = body.clone();
            tasks.push(async move {
                let r = post(&t, body).await;
                (t, r)
            });
        }
        for (t, r) in futures_join(tasks).await {
            match r {
                Ok(()) => {
                    inner
                        .counters
                        .sent
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    debug!(url = %t.url, alerts = batch.len(), "alerts sent");
                }
                Err(e) => {
                    inner
                        .counters
                        .errors
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    warn!(url = %t.url, alerts = batch.len(), error = %e, "sending alerts failed");
                }
            }
        }
    }
}

async fn futures_join<F: std::future::Future + Send + 'static>(fs: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

async fn post(t: &AmTarget, body: Bytes) -> Result<(), String> {
    let fut = async {
        let mut conn = t.conn.lock().await;
        let (status, text) = t
            .client
            .post(&mut conn, &t.url, "application/json", body)
            .await?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&text[..text.len().min(512)]).to_string();
            return Err(format!("bad response status {status}: {text}"));
        }
        Ok(())
    };
    match tokio::time::timeout(t.timeout.max(Duration::from_millis(1)), fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timeout after {:?}", t.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_from_yaml() {
        let y = "alertmanagers:\n- static_configs: [{targets: ['a:9093', 'b:9093']}]\n  path_prefix: am\n  basic_auth: {username: u, password: p}\n  timeout: 3s\n";
        let c: AlertingConfig = serde_yaml_ng::from_str(y).unwrap();
        let t = targets_from_config(&c).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].url, "http://a:9093/am/api/v2/alerts");
        assert_eq!(t[0].timeout, Duration::from_secs(3));
    }

    #[test]
    fn generator_url_encodes_expr() {
        assert_eq!(
            generator_url("http://h:9190/", "up == 0"),
            "http://h:9190/graph?g0.expr=up+%3D%3D+0&g0.tab=1"
        );
    }

    #[tokio::test]
    async fn queue_is_bounded_and_counts_drops() {
        let n = Notifier::start(Vec::new());
        let a = AmAlert {
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            starts_at: String::new(),
            ends_at: String::new(),
            generator_url: String::new(),
        };
        n.send(vec![a; QUEUE_CAPACITY + 5]);
        assert_eq!(n.dropped(), 5);
        assert!(n.queue_length() <= QUEUE_CAPACITY);
        let mut m = String::new();
        n.render_metrics(&mut m);
        assert!(m.contains("tidemark_notifications_dropped_total 5"));
    }
}
