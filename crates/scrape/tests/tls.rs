//! Scraping over TLS: a rustls server with a certificate from a throw-away CA made by the
//! `openssl` CLI at test time (skipped with a message when it is missing). Checks `ca_file`,
//! `server_name`, `insecure_skip_verify`, and that an unknown CA marks the target down.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tidemark_scrape::{Health, ScrapeManager, ScrapeOptions, parse_config};
use tidemark_storage::memory::MemStorage;

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tidemark test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

async fn https_server(dir: &Path) -> u16 {
    let certs: Vec<_> = rustls_pemfile::certs(&mut std::io::BufReader::new(
        &std::fs::read(dir.join("srv.pem")).unwrap()[..],
    ))
    .collect::<Result<_, _>>()
    .unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        &std::fs::read(dir.join("srv.key")).unwrap()[..],
    ))
    .unwrap()
    .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from("tls_metric 7\n")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_over_tls() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("SKIPPED: openssl CLI not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let port = https_server(dir.path()).await;
    let ca = dir.path().join("ca.pem").display().to_string();
    let yaml = format!(
        r#"scrape_configs:
  - job_name: ca
    scheme: https
    scrape_interval: 1s
    tls_config: {{ca_file: '{ca}'}}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
  - job_name: sni
    scheme: https
    scrape_interval: 1s
    tls_config: {{ca_file: '{ca}', server_name: localhost}}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
  - job_name: insecure
    scheme: https
    scrape_interval: 1s
    tls_config: {{insecure_skip_verify: true}}
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
  - job_name: unknown_ca
    scheme: https
    scrape_interval: 1s
    static_configs: [{{targets: ['127.0.0.1:{port}']}}]
"#
    );
    let store = MemStorage::new();
    let m = ScrapeManager::new(
        Arc::new(store.clone()),
        ScrapeOptions {
            spread_offsets: false,
            ..Default::default()
        },
    );
    m.apply_config(&parse_config(&yaml).unwrap()).unwrap();
    for _ in 0..200 {
        if m.targets()
            .active_targets
            .iter()
            .all(|t| t.health != Health::Unknown)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in m.targets().active_targets {
        if t.scrape_pool == "unknown_ca" {
            assert_eq!(t.health, Health::Down);
            assert!(t.last_error.contains("certificate"), "{}", t.last_error);
        } else {
            assert_eq!(t.health, Health::Up, "{}: {}", t.scrape_pool, t.last_error);
            assert!(t.scrape_url.starts_with("https://"));
        }
    }
    m.stop().await;
}
