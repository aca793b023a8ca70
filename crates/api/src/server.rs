//! The server loop: accepts TCP connections, optionally terminates TLS (tokio-rustls with the
//! ring provider), enforces basic auth from the web config, and serves the router over HTTP/1.1
//! and HTTP/2 with hyper. Slow clients are bounded: the TLS handshake and the request headers
//! must arrive within a timeout (bodies are bounded by the handlers, see `body.rs`), and the
//! number of open connections is capped (`--web.max-connections`).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::web_config::WebConfig;

/// Error from [`serve`].
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid response header {0:?} in web config")]
    Header(String),
}

/// Connection-level settings of [`serve_with`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Time allowed for a request's headers (`--web.read-header-timeout`, 10 s).
    pub header_read_timeout: Duration,
    /// Time allowed for the TLS handshake (10 s).
    pub tls_handshake_timeout: Duration,
    /// Most open connections; more are closed at once (`--web.max-connections`, 512).
    pub max_connections: usize,
    /// On shutdown, time given to in-flight requests (10 s).
    pub shutdown_grace: Duration,
    /// Where to count open connections.
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 512,
            shutdown_grace: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, with default [`ServeOptions`].
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web_config: Option<WebConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(
        listener,
        router,
        web_config,
        ServeOptions::default(),
        shutdown,
    )
    .await
}

#[derive(Debug)]
struct Auth {
    users: BTreeMap<String, String>,
    /// Hashes of (user, password, bcrypt hash) already verified: bcrypt is slow on purpose
    /// and clients authenticate on every request (exporter-toolkit caches the same way).
    verified: Mutex<HashSet<u64>>,
}

fn cache_key(user: &str, pass: &str, hash: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (user, pass, hash).hash(&mut h);
    h.finish()
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    r
}

/// Standard base64 decoding (for `Authorization: Basic`).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

async fn basic_auth(State(auth): State<Arc<Auth>>, req: Request, next: Next) -> Response {
    let creds = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(base64_decode)
        .and_then(|b| String::from_utf8(b).ok());
    let Some((user, pass)) = creds.as_deref().and_then(|c| c.split_once(':')) else {
        return unauthorized();
    };
    let Some(hash) = auth.users.get(user).cloned() else {
        return unauthorized();
    };
    let key = cache_key(user, pass, &hash);
    if !auth.verified.lock().contains(&key) {
        let pass = pass.to_string();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        if !ok {
            tracing::warn!(user, "basic auth failed");
            return unauthorized();
        }
        let mut v = auth.verified.lock();
        if v.len() > 10_000 {
            v.clear();
        }
        v.insert(key);
    }
    next.run(req).await
}

async fn add_headers(
    State(h): State<Arc<Vec<(HeaderName, HeaderValue)>>>,
    req: Request,
    next: Next,
) -> Response {
    let mut r = next.run(req).await;
    for (k, v) in h.iter() {
        r.headers_mut().insert(k.clone(), v.clone());
    }
    r
}

/// [`serve`] with explicit connection settings.
pub async fn serve_with(
    listener: TcpListener,
    mut router: Router,
    web_config: Option<WebConfig>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let web = web_config.unwrap_or_else(|| WebConfig {
        http2: true,
        ..Default::default()
    });
    if !web.headers.is_empty() {
        let mut hs = Vec::new();
        for (k, v) in &web.headers {
            let name =
                HeaderName::try_from(k.as_str()).map_err(|_| ServeError::Header(k.clone()))?;
            let value =
                HeaderValue::try_from(v.as_str()).map_err(|_| ServeError::Header(k.clone()))?;
            hs.push((name, value));
        }
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(hs),
            add_headers,
        ));
    }
    if !web.basic_auth_users.is_empty() {
        let auth = Arc::new(Auth {
            users: web.basic_auth_users.clone(),
            verified: Mutex::new(HashSet::new()),
        });
        router = router.layer(axum::middleware::from_fn_with_state(auth, basic_auth));
    }
    let acceptor = web.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let http2 = web.http2;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = opts.max_connections, "connection limit reached, closing new connection (raise it with --web.max-connections)");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let opts = opts.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(m) = &opts.metrics {
                m.connections_open.fetch_add(1, Ordering::Relaxed);
            }
            match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(opts.tls_handshake_timeout, acc.accept(stream)).await
                    {
                        Ok(Ok(tls)) => serve_conn(tls, svc, watcher, http2, &opts).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_conn(stream, svc, watcher, http2, &opts).await,
            }
            if let Some(m) = &opts.metrics {
                m.connections_open.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(opts.shutdown_grace) => tracing::warn!("shutdown grace period over, closing remaining connections"),
    }
    Ok(())
}

async fn serve_conn<I>(
    io: I,
    svc: TowerToHyperService<Router>,
    watcher: hyper_util::server::graceful::Watcher,
    http2: bool,
    opts: &ServeOptions,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    b.http2().timer(TokioTimer::new());
    let b = if http2 { b } else { b.http1_only() };
    let conn = b.serve_connection(TokioIo::new(io), svc);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("YWxpY2U6c2VjcmV0").unwrap(), b"alice:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert!(base64_decode("!!").is_none());
    }
}
