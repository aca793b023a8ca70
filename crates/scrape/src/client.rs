//! The scrape HTTP client: HTTP/1.1 over TCP or TLS (rustls with the ring provider), one kept-
//! alive connection per target, Prometheus' Accept header, gzip, body size limit, basic auth,
//! bearer/authorization credentials (inline or from files, re-read on every scrape), redirects.
//! No proxy support (by design). Also the Alertmanager notifier's client ([`HttpClient::post`]):
//! one implementation of TLS, credentials and connection reuse.

use std::io::BufReader;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    ACCEPT, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HOST, LOCATION,
    USER_AGENT,
};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use crate::config::{HttpClientConfig, TlsConfig};

/// The Accept header Prometheus 3 sends by default (OpenMetrics preferred, then text).
pub const ACCEPT_HEADER: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,\
application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,\
text/plain;version=0.0.4;q=0.3,*/*;q=0.2";

const MAX_REDIRECTS: usize = 10;

#[derive(Debug, Clone)]
enum Source {
    Inline(String),
    File(String),
}

impl Source {
    fn read(&self) -> Result<String, String> {
        match self {
            Source::Inline(s) => Ok(s.clone()),
            Source::File(p) => std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .map_err(|e| format!("unable to read {p}: {e}")),
        }
    }
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic { user: Source, pass: Option<Source> },
    Credentials { kind: String, creds: Source },
}

/// A fetched body.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) body: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) gzip: bool,
}

/// A kept-alive connection to one `scheme://authority`.
pub struct Connection {
    key: String,
    sender: SendRequest<Full<Bytes>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("key", &self.key)
            .finish()
    }
}

/// One scrape config's (or Alertmanager config's) HTTP client.
#[derive(Clone)]
pub struct HttpClient {
    tls: Option<tokio_rustls::TlsConnector>,
    tls_error: Option<String>,
    server_name: Option<String>,
    auth: Auth,
    follow_redirects: bool,
    gzip: bool,
    body_limit: u64,
    user_agent: String,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("auth", &self.auth)
            .field("gzip", &self.gzip)
            .finish()
    }
}

/// Standard base64 (RFC 4648, padded), for `Authorization: Basic` headers. Shared with the
/// rules crate's Alertmanager notifier.
pub fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn pem_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("parsing {what}: {e}"))
}

fn read_file(p: &str) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("unable to read {p}: {e}"))
}

/// Builds the rustls config for a `tls_config:` block.
pub(crate) fn tls_client_config(t: &TlsConfig) -> Result<rustls::ClientConfig, String> {
    // The ring provider keeps aws-lc-sys (slow to build) out of the tree; rustls marks it
    // deprecated only because it lacks post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = match t.min_version.as_deref() {
        Some("TLS13") => vec![&rustls::version::TLS13],
        _ => match t.max_version.as_deref() {
            Some("TLS12") => vec![&rustls::version::TLS12],
            _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        },
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS config: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let ca_pem = match (&t.ca, &t.ca_file) {
        (Some(ca), _) => Some(ca.as_bytes().to_vec()),
        (None, Some(f)) => Some(read_file(f)?),
        (None, None) => std::fs::read("/etc/ssl/certs/ca-certificates.crt").ok(),
    };
    if let Some(pem) = ca_pem {
        for c in pem_certs(&pem, "CA certificates")? {
            roots
                .add(c)
                .map_err(|e| format!("adding CA certificate: {e}"))?;
        }
    }
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots)
    };
    let cert = match (&t.cert, &t.cert_file) {
        (Some(c), _) => Some(c.as_bytes().to_vec()),
        (None, Some(f)) => Some(read_file(f)?),
        _ => None,
    };
    let key = match (&t.key, &t.key_file) {
        (Some(k), _) => Some(k.0.as_bytes().to_vec()),
        (None, Some(f)) => Some(read_file(f)?),
        _ => None,
    };
    match (cert, key) {
        (Some(c), Some(k)) => {
            let certs = pem_certs(&c, "client certificate")?;
            let key = rustls_pemfile::private_key(&mut BufReader::new(&k[..]))
                .map_err(|e| format!("parsing client key: {e}"))?
                .ok_or_else(|| "no private key found in client key".to_string())?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(
            "exactly one of cert and key configured: both are needed for client authentication"
                .into(),
        ),
    }
}

impl HttpClient {
    /// A client for one scrape config. A broken TLS setup is reported on every https scrape.
    pub fn new(cfg: &HttpClientConfig, gzip: bool, body_limit: u64) -> HttpClient {
        let (tls, tls_error) = match tls_client_config(&cfg.tls_config) {
            Ok(c) => (Some(tokio_rustls::TlsConnector::from(Arc::new(c))), None),
            Err(e) => (None, Some(e)),
        };
        let auth = if let Some(b) = &cfg.basic_auth {
            let user = match &b.username_file {
                Some(f) => Source::File(f.clone()),
                None => Source::Inline(b.username.clone()),
            };
            let pass = match (&b.password, &b.password_file) {
                (Some(p), _) => Some(Source::Inline(p.0.clone())),
                (None, Some(f)) => Some(Source::File(f.clone())),
                _ => None,
            };
            Auth::Basic { user, pass }
        } else if let Some(a) = &cfg.authorization {
            let creds = match (&a.credentials, &a.credentials_file) {
                (Some(c), _) => Source::Inline(c.0.clone()),
                (None, Some(f)) => Source::File(f.clone()),
                _ => Source::Inline(String::new()),
            };
            Auth::Credentials {
                kind: a.kind.clone(),
                creds,
            }
        } else if let Some(t) = &cfg.bearer_token {
            Auth::Credentials {
                kind: "Bearer".into(),
                creds: Source::Inline(t.0.clone()),
            }
        } else if let Some(f) = &cfg.bearer_token_file {
            Auth::Credentials {
                kind: "Bearer".into(),
                creds: Source::File(f.clone()),
            }
        } else {
            Auth::None
        };
        HttpClient {
            tls,
            tls_error,
            server_name: cfg.tls_config.server_name.clone(),
            auth,
            follow_redirects: cfg.follow_redirects,
            gzip,
            body_limit,
            user_agent: format!("Tidemark/{}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn auth_header(&self) -> Result<Option<String>, String> {
        Ok(match &self.auth {
            Auth::None => None,
            Auth::Basic { user, pass } => {
                let u = user.read()?;
                let p = match pass {
                    Some(p) => p.read()?,
                    None => String::new(),
                };
                Some(format!("Basic {}", base64(format!("{u}:{p}").as_bytes())))
            }
            Auth::Credentials { kind, creds } => Some(format!("{kind} {}", creds.read()?)),
        })
    }

    async fn connect(&self, uri: &Uri) -> Result<Connection, String> {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().ok_or("URL has no host")?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|e| format!("dial tcp {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        let sender = if https {
            let Some(tls) = &self.tls else {
                return Err(self
                    .tls_error
                    .clone()
                    .unwrap_or_else(|| "TLS not configured".into()));
            };
            let name = self
                .server_name
                .clone()
                .unwrap_or_else(|| bare_host.to_string());
            let sn = ServerName::try_from(name.clone())
                .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))?;
            let stream = tls
                .connect(sn, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
        };
        Ok(Connection { key, sender })
    }

    /// GETs `url` (following redirects when allowed), reusing `conn` when it points at the same
    /// server. Errors read like Prometheus' (`Get "URL": ...`, `server returned HTTP status ...`).
    pub(crate) async fn fetch(
        &self,
        conn: &mut Option<Connection>,
        url: &str,
        timeout_s: f64,
    ) -> Result<Fetched, String> {
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url
                .parse()
                .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
            let resp = self
                .request(conn, &uri, timeout_s)
                .await
                .map_err(|e| format!("Get {url:?}: {e}"))?;
            let status = resp.status();
            if status.is_redirection() && self.follow_redirects {
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| format!("Get {url:?}: redirect without Location"))?
                    .to_string();
                url = if loc.starts_with("http://") || loc.starts_with("https://") {
                    loc
                } else {
                    let base = format!(
                        "{}://{}",
                        uri.scheme_str().unwrap_or("http"),
                        uri.authority().map_or("", |a| a.as_str())
                    );
                    if loc.starts_with('/') {
                        format!("{base}{loc}")
                    } else {
                        format!("{base}/{loc}")
                    }
                };
                continue;
            }
            if status != hyper::StatusCode::OK {
                return Err(format!(
                    "server returned HTTP status {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ));
            }
            let content_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let gzip = resp
                .headers()
                .get(CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
            let mut body = resp.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading body of {url:?}: {e}"))?;
                if let Some(d) = frame.data_ref() {
                    out.extend_from_slice(d);
                    if self.body_limit > 0 && out.len() as u64 > self.body_limit {
                        *conn = None;
                        return Err(format!(
                            "body size limit exceeded (limit: {} bytes)",
                            self.body_limit
                        ));
                    }
                }
            }
            return Ok(Fetched {
                body: out,
                content_type,
                gzip,
            });
        }
        Err(format!(
            "Get {url:?}: stopped after {MAX_REDIRECTS} redirects"
        ))
    }

    /// POSTs `body` to `url` on `conn` (reconnecting when needed); returns the status and at
    /// most 4 KiB of the response body.
    pub async fn post(
        &self,
        conn: &mut Option<Connection>,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes), String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let c = self.ready_connection(conn, &uri).await?;
        let mut req = Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, uri.authority().map_or("", |a| a.as_str()))
            .header(CONTENT_TYPE, content_type)
            .header(USER_AGENT, &self.user_agent);
        if let Some(a) = self.auth_header()? {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = match c.sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                *conn = None;
                return Err(e.to_string());
            }
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading response of {url:?}: {e}"))?;
            if let Some(d) = frame.data_ref()
                && out.len() < 4096
            {
                out.extend_from_slice(&d[..d.len().min(4096 - out.len())]);
            }
        }
        Ok((status, Bytes::from(out)))
    }

    /// The kept connection when it goes to `uri`'s scheme and authority and is ready, else a
    /// new one (kept in `conn` for the next call).
    async fn ready_connection<'a>(
        &self,
        conn: &'a mut Option<Connection>,
        uri: &Uri,
    ) -> Result<&'a mut Connection, String> {
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or("http"),
            uri.authority().map_or("", |a| a.as_str())
        );
        let reusable = match conn {
            Some(c) => c.key == key && c.sender.ready().await.is_ok(),
            None => false,
        };
        if !reusable {
            *conn = Some(self.connect(uri).await?);
        }
        conn.as_mut().ok_or_else(|| "no connection".to_string())
    }

    async fn request(
        &self,
        conn: &mut Option<Connection>,
        uri: &Uri,
        timeout_s: f64,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let c = self.ready_connection(conn, uri).await?;
        let mut req = Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
            .header(HOST, uri.authority().map_or("", |a| a.as_str()))
            .header(ACCEPT, ACCEPT_HEADER)
            .header(ACCEPT_ENCODING, if self.gzip { "gzip" } else { "identity" })
            .header(USER_AGENT, &self.user_agent)
            .header(
                "X-Prometheus-Scrape-Timeout-Seconds",
                format!("{timeout_s}"),
            );
        if let Some(a) = self.auth_header()? {
            req = req.header(AUTHORIZATION, a);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        match c.sender.send_request(req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                *conn = None;
                Err(e.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn auth_headers_and_credential_files() {
        use crate::config::{Authorization, BasicAuth, Secret};
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "tok1\n").unwrap();
        let cfg = HttpClientConfig {
            authorization: Some(Authorization {
                kind: "Bearer".into(),
                credentials: None,
                credentials_file: Some(f.display().to_string()),
            }),
            ..Default::default()
        };
        let c = HttpClient::new(&cfg, true, 0);
        assert_eq!(c.auth_header().unwrap().as_deref(), Some("Bearer tok1"));
        std::fs::write(&f, "tok2").unwrap();
        assert_eq!(
            c.auth_header().unwrap().as_deref(),
            Some("Bearer tok2"),
            "file re-read per scrape"
        );
        let cfg = HttpClientConfig {
            bearer_token: Some(Secret("abc".into())),
            ..Default::default()
        };
        assert_eq!(
            HttpClient::new(&cfg, true, 0)
                .auth_header()
                .unwrap()
                .as_deref(),
            Some("Bearer abc")
        );
        let cfg = HttpClientConfig {
            basic_auth: Some(BasicAuth {
                username: "user".into(),
                password: Some(Secret("pass".into())),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            HttpClient::new(&cfg, true, 0)
                .auth_header()
                .unwrap()
                .as_deref(),
            Some("Basic dXNlcjpwYXNz")
        );
        let cfg = HttpClientConfig {
            bearer_token_file: Some("/nonexistent/tok".into()),
            ..Default::default()
        };
        assert!(
            HttpClient::new(&cfg, true, 0)
                .auth_header()
                .unwrap_err()
                .contains("/nonexistent/tok")
        );
    }

    #[test]
    fn tls_config_errors_are_reported() {
        let t = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(
            tls_client_config(&t)
                .unwrap_err()
                .contains("/nonexistent/ca.pem")
        );
        let t = TlsConfig {
            cert_file: Some("/etc/hostname".into()),
            ..Default::default()
        };
        assert!(tls_client_config(&t).is_err());
        assert!(tls_client_config(&TlsConfig::default()).is_ok());
        assert!(
            tls_client_config(&TlsConfig {
                insecure_skip_verify: true,
                ..Default::default()
            })
            .is_ok()
        );
    }
}
