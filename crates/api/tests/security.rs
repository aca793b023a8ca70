//! TLS and basic auth from a Prometheus-format `--web.config.file`: a self-signed certificate
//! made at test time (rcgen), bcrypt-hashed users; plain HTTP to the TLS port fails, requests
//! without or with wrong credentials get 401, right ones get the API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/server.rs"]
mod support;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use support::*;
use tidemark_api::{ApiOptions, ServeOptions, load_web_config};

async fn tls_get(
    addr: std::net::SocketAddr,
    cert_pem: &str,
    path: &str,
    auth: Option<&str>,
) -> (StatusCode, String) {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut cert_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut b = Request::builder().uri(path).header("host", "localhost");
    if let Some(a) = auth {
        b = b.header("authorization", a);
    }
    let resp = sender
        .send_request(b.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn tls_and_basic_auth_from_web_config() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_pem = ck.cert.pem();
    std::fs::write(dir.path().join("server.crt"), &cert_pem).unwrap();
    std::fs::write(
        dir.path().join("server.key"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let cfg = format!(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\nbasic_auth_users:\n  alice: {hash}\n"
    );
    let path = dir.path().join("web.yml");
    std::fs::write(&path, cfg).unwrap();
    let web = load_web_config(&path).unwrap();
    assert!(web.tls.is_some());
    let srv = start_full(
        ApiOptions::default(),
        |a| a,
        Some(web),
        ServeOptions::default(),
    )
    .await;

    let basic = |u: &str, p: &str| {
        // Standard base64 of "user:pass" (small encoder so the test does not trust the server's).
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let s = format!("{u}:{p}");
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..4 {
                if i <= c.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    };
    let (s, _) = tls_get(srv.addr, &cert_pem, "/-/healthy", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = tls_get(
        srv.addr,
        &cert_pem,
        "/-/healthy",
        Some(&basic("alice", "wrong")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = tls_get(
        srv.addr,
        &cert_pem,
        "/-/healthy",
        Some(&basic("mallory", "s3cret")),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = tls_get(
        srv.addr,
        &cert_pem,
        "/api/v1/status/buildinfo",
        Some(&basic("alice", "s3cret")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert!(
        body.starts_with(r#"{"status":"success","data":{"#),
        "{body}"
    );
    // Second request hits the verified-credentials cache; same answer.
    let (s, _) = tls_get(
        srv.addr,
        &cert_pem,
        "/-/healthy",
        Some(&basic("alice", "s3cret")),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Plain HTTP to the TLS port does not get an answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client().get(srv.url("/-/healthy").parse().unwrap()),
    )
    .await;
    assert!(
        !matches!(plain, Ok(Ok(ref r)) if r.status() == StatusCode::OK),
        "plain HTTP must not be served"
    );
    srv.stop().await;
}

#[tokio::test]
async fn web_config_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("web.yml");
    std::fs::write(
        &p,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    )
    .unwrap();
    let e = load_web_config(&p).unwrap_err().to_string();
    assert!(e.contains("missing.crt"), "{e}");
    std::fs::write(&p, "basic_auth_users:\n  bob: hunter2\n").unwrap();
    let e = load_web_config(&p).unwrap_err().to_string();
    assert!(e.contains("bcrypt"), "{e}");
    std::fs::write(&p, "basic_auth_user:\n  bob: x\n").unwrap();
    let e = load_web_config(&p).unwrap_err().to_string();
    assert!(e.contains("basic_auth_user"), "{e}");
    assert!(
        load_web_config(dir.path().join("nope.yml"))
            .unwrap_err()
            .to_string()
            .contains("nope.yml")
    );
}
