//! Prometheus' `--web.config.file` (the exporter-toolkit format): `tls_server_config`,
//! `http_server_config` and `basic_auth_users` (bcrypt hashes). Relative paths are relative to
//! the file's directory, as in Prometheus. Unknown keys are errors; keys of the format that
//! rustls does not need (`cipher_suites`, `curve_preferences`, `prefer_server_cipher_suites`)
//! are accepted and ignored (rustls' defaults are modern suites and curves only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    http_server_config: Option<HttpFile>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    #[serde(default)]
    cert_file: String,
    #[serde(default)]
    key_file: String,
    /// Inline PEM certificate (exporter-toolkit's `cert`).
    #[serde(default)]
    cert: String,
    /// Inline PEM key (exporter-toolkit's `key`).
    #[serde(default)]
    key: String,
    #[serde(default)]
    client_auth_type: String,
    #[serde(default)]
    client_ca_file: String,
    #[serde(default)]
    client_ca: String,
    #[serde(default)]
    min_version: String,
    #[serde(default)]
    max_version: String,
    #[serde(default)]
    cipher_suites: Vec<String>,
    #[serde(default)]
    curve_preferences: Vec<String>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default)]
    client_allowed_sans: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    #[serde(default)]
    http2: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Error loading a web config file.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("reading web config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing web config: {0}")]
    Yaml(String),
    #[error("web config: {0}")]
    Invalid(String),
    #[error("web config TLS: {0}")]
    Tls(String),
}

/// A loaded web config, ready for [`crate::serve`].
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// TLS server settings (None: plain HTTP).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// user -> bcrypt hash (empty: no authentication).
    pub basic_auth_users: BTreeMap<String, String>,
    /// Headers added to every response (`http_server_config.headers`).
    pub headers: BTreeMap<String, String>,
    /// Serve HTTP/2 (`http_server_config.http2`, default true).
    pub http2: bool,
}

/// Reads and validates a web config file.
pub fn load_web_config(path: impl AsRef<Path>) -> Result<WebConfig, WebConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_web_config(&text, path.parent().unwrap_or(Path::new(".")))
}

fn read_pem(dir: &Path, file: &str, inline: &str, what: &str) -> Result<Vec<u8>, WebConfigError> {
    match (file.is_empty(), inline.is_empty()) {
        (false, false) => Err(WebConfigError::Invalid(format!(
            "both {what}_file and {what} are set"
        ))),
        (true, true) => Ok(Vec::new()),
        (true, false) => Ok(inline.as_bytes().to_vec()),
        (false, true) => {
            let p = dir.join(file);
            std::fs::read(&p).map_err(|source| WebConfigError::Read { path: p, source })
        }
    }
}

/// Parses web config text; relative paths are resolved against `dir`.
pub fn parse_web_config(text: &str, dir: &Path) -> Result<WebConfig, WebConfigError> {
    let fc: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Yaml(e.to_string()))?
    };
    for (user, hash) in &fc.basic_auth_users {
        if user.is_empty() || user.contains(':') {
            return Err(WebConfigError::Invalid(format!(
                "invalid basic auth user name {user:?}"
            )));
        }
        if !hash.starts_with("$2") {
            return Err(WebConfigError::Invalid(format!(
                "basic auth password of user {user:?} is not a bcrypt hash"
            )));
        }
    }
    let http = fc.http_server_config.unwrap_or_default();
    let http2 = http.http2.unwrap_or(true);
    let tls = match fc.tls_server_config {
        None => None,
        Some(t) => Some(Arc::new(build_tls(&t, dir, http2)?)),
    };
    Ok(WebConfig {
        tls,
        basic_auth_users: fc.basic_auth_users,
        headers: http.headers,
        http2,
    })
}

fn build_tls(t: &TlsFile, dir: &Path, http2: bool) -> Result<rustls::ServerConfig, WebConfigError> {
    let tls_err = |e: &dyn std::fmt::Display| WebConfigError::Tls(e.to_string());
    if !t.client_allowed_sans.is_empty() {
        // Refuse rather than silently accept clients the operator meant to exclude.
        return Err(WebConfigError::Invalid(
            "client_allowed_sans is not supported by Tidemark".to_string(),
        ));
    }
    if !t.cipher_suites.is_empty()
        || !t.curve_preferences.is_empty()
        || t.prefer_server_cipher_suites.is_some()
    {
        tracing::warn!(
            "web config: cipher_suites, curve_preferences and prefer_server_cipher_suites are ignored (rustls uses only modern suites and curves)"
        );
    }
    let cert_pem = read_pem(dir, &t.cert_file, &t.cert, "cert")?;
    let key_pem = read_pem(dir, &t.key_file, &t.key, "key")?;
    if cert_pem.is_empty() {
        return Err(WebConfigError::Invalid("missing cert_file".to_string()));
    }
    if key_pem.is_empty() {
        return Err(WebConfigError::Invalid("missing key_file".to_string()));
    }
    let certs = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(&e))?;
    if certs.is_empty() {
        return Err(WebConfigError::Tls(
            "no certificate found in cert_file".to_string(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| tls_err(&e))?
        .ok_or_else(|| WebConfigError::Tls("no private key found in key_file".to_string()))?;
    let version = |s: &str| -> Result<Option<u8>, WebConfigError> {
        match s {
            "" => Ok(None),
            "TLS10" | "TLS11" | "TLS12" => Ok(Some(12)),
            "TLS13" => Ok(Some(13)),
            other => Err(WebConfigError::Invalid(format!(
                "unknown TLS version {other:?}"
            ))),
        }
    };
    let min = version(&t.min_version)?.unwrap_or(12);
    let max = version(&t.max_version)?.unwrap_or(13);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min <= 12 && max >= 12 {
        versions.push(&rustls::version::TLS12);
    }
    if max >= 13 {
        versions.push(&rustls::version::TLS13);
    }
    if versions.is_empty() {
        return Err(WebConfigError::Invalid(
            "min_version is above max_version".to_string(),
        ));
    }
    // ring, not aws-lc-rs: it builds without cmake/nasm. rustls 0.23.48 deprecates the ring
    // provider only because it lacks post-quantum key exchange.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| tls_err(&e))?;
    let ca_pem = read_pem(dir, &t.client_ca_file, &t.client_ca, "client_ca")?;
    let auth = if t.client_auth_type.is_empty() {
        "NoClientCert"
    } else {
        t.client_auth_type.as_str()
    };
    let builder = match auth {
        "NoClientCert" | "RequestClientCert" | "RequireAnyClientCert" => {
            builder.with_no_client_auth()
        }
        "VerifyClientCertIfGiven" | "RequireAndVerifyClientCert" => {
            if ca_pem.is_empty() {
                return Err(WebConfigError::Invalid(format!(
                    "client_auth_type {auth} needs client_ca_file"
                )));
            }
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
                roots
                    .add(c.map_err(|e| tls_err(&e))?)
                    .map_err(|e| tls_err(&e))?;
            }
            let mut vb = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if auth == "VerifyClientCertIfGiven" {
                vb = vb.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(vb.build().map_err(|e| tls_err(&e))?)
        }
        other => {
            return Err(WebConfigError::Invalid(format!(
                "invalid client_auth_type {other:?}"
            )));
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_err(&e))?;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_auth_only() {
        let c = parse_web_config("", Path::new(".")).unwrap();
        assert!(c.tls.is_none() && c.basic_auth_users.is_empty() && c.http2);
        let c = parse_web_config(
            "basic_auth_users:\n  alice: $2y$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.basic_auth_users.len(), 1);
    }

    #[test]
    fn errors_are_clear() {
        let e = parse_web_config("basic_auth_users:\n  bob: plain\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("bcrypt"), "{e}");
        let e = parse_web_config("tls_server_confg: {}\n", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("tls_server_confg"), "{e}");
        let e = parse_web_config(
            "tls_server_config:\n  cert_file: nope.pem\n  key_file: nope.key\n",
            Path::new("/nonexistent"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.pem"), "{e}");
    }
}
