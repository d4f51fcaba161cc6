//! TLS between the real binaries, with certificates `rally-collector pki` made: agents
//! report over mutual TLS and their certificate names their VM; a certificate for
//! another VM, from another CA, expired, or for another name is refused with a log line
//! that says so on both sides; a renewed certificate is taken on SIGHUP; tokens in
//! clear are refused from the network; Prometheus scrapes `/metrics` over HTTPS.

#![allow(clippy::unwrap_used)] // a panic is the test failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rally_tests::nspawn::Netns;
use rally_tests::process::Process;
use rally_tests::prometheus::Prometheus;
use rally_tests::rally::Agent;
use rally_tests::{bin, eventually, free_port};

/// Runs `rally-collector pki <args> --dir <dir>` and expects success.
fn pki(dir: &Path, args: &[&str]) {
    let out = Command::new(bin::path("rally-collector"))
        .arg("pki")
        .args(args)
        .arg("--dir")
        .arg(dir)
        .output()
        .expect("run rally-collector pki");
    assert!(
        out.status.success(),
        "pki {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA with a server certificate for `names` and client certificates for `vms`.
fn make_pki(dir: &Path, names: &[&str], vms: &[&str]) -> PathBuf {
    pki(dir, &["ca"]);
    let mut server = vec!["server"];
    for name in names {
        server.extend(["--name", name]);
    }
    pki(dir, &server);
    if !vms.is_empty() {
        pki(dir, &[&["client"][..], vms].concat());
    }
    dir.to_owned()
}

/// A collector started from `config` (listeners included), ready when `/healthz`
/// answers (over HTTPS with `https_ca`).
struct Collector {
    process: Process,
    grpc_port: u16,
    http: String,
}

impl Collector {
    async fn start(dir: &Path, grpc_ip: &str, extra: &str, https_ca: Option<&Path>) -> Self {
        let grpc_port = free_port();
        let http_port = free_port();
        let state = dir.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let config = dir.join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\ngrpc = \"{grpc_ip}:{grpc_port}\"\nhttp = \"127.0.0.1:{http_port}\"\n\n[state]\ndir = \"{}\"\n\n{extra}\n",
                state.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin::path("rally-collector"));
        cmd.arg("--config")
            .arg(&config)
            .arg("run")
            .env("RUST_LOG", "info,rally_collector::ingest=debug");
        let process = Process::spawn("rally-collector", cmd, &dir.join("collector.log"));
        let scheme = if https_ca.is_some() { "https" } else { "http" };
        let http = format!("{scheme}://localhost:{http_port}");
        let client = http_client(https_ca);
        let url = format!("{http}/healthz");
        eventually(Duration::from_secs(30), "collector /healthz", || {
            let req = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move { req.await.ok().filter(|r| r.status().is_success()) }
        })
        .await;
        Collector {
            process,
            grpc_port,
            http,
        }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// `/metrics` (plain HTTP).
    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.http))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body")
    }

    /// `Some` once a fresh report from `vm` is in the fleet.
    async fn reports_from(&self, vm: &str) -> Option<()> {
        self.has_reports_from(vm).await.then_some(())
    }

    /// Whether the collector has fresh data from `vm`.
    async fn has_reports_from(&self, vm: &str) -> bool {
        let Ok(resp) = reqwest::get(format!("{}/api/v1/vms", self.http)).await else {
            return false;
        };
        let Ok(vms) = resp.json::<serde_json::Value>().await else {
            return false;
        };
        vms["vms"].as_array().is_some_and(|list| {
            list.iter()
                .any(|v| v["vm"] == vm && v["fresh"].as_bool() == Some(true))
        })
    }
}

fn http_client(ca: Option<&Path>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder();
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// `[tls]` for an agent with `pki`'s CA and `vm`'s pair from `certs`.
fn agent_tls(pki: &Path, certs: &Path, vm: &str) -> String {
    format!(
        "[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.join("ca.pem").display(),
        certs.join(format!("vms/{vm}.pem")).display(),
        certs.join(format!("vms/{vm}.key")).display()
    )
}

/// `[auth]` and `[tls]` of a collector that identifies agents by certificate.
fn mtls_collector(pki: &Path) -> String {
    format!(
        "[auth]\nmode = \"certificate\"\n\n[tls]\ncert_file = \"{0}/server.pem\"\nkey_file = \"{0}/server.key\"\nclient_ca_file = \"{0}/ca.pem\"\n",
        pki.display()
    )
}

async fn wait_for_log(what: &str, process: &Process, needle: &str) {
    let start = std::time::Instant::now();
    while !process.log().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what} ({needle:?}) in {}:\n{}",
            process.log_path().display(),
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the sample `name` in a `/metrics` text, 0 when absent.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_report_over_mutual_tls_and_a_certificate_for_another_vm_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"), &["localhost"], &["web-1", "web-2"]);
    let collector = Collector::start(dir.path(), "127.0.0.1", &mtls_collector(&pki), None).await;
    let url = format!("https://localhost:{}", collector.grpc_port);

    let agent = Agent::start(
        dir.path(),
        "web-1",
        std::slice::from_ref(&url),
        "200ms",
        &agent_tls(&pki, &pki, "web-1"),
    );
    eventually(Duration::from_secs(30), "web-1's reports over mTLS", || {
        collector.reports_from("web-1")
    })
    .await;
    assert!(
        !agent.process.log().contains("WITHOUT TLS"),
        "{}",
        agent.process.log()
    );

    // VM web-3 presenting web-2's certificate.
    let impostor = Agent::start(
        dir.path(),
        "web-3",
        &[url],
        "200ms",
        &agent_tls(&pki, &pki, "web-2"),
    );
    wait_for_log(
        "the impostor's refusal",
        &impostor.process,
        "may only report for VM `web-2`, not `web-3`",
    )
    .await;
    let metrics = collector.metrics().await;
    assert!(
        sample(
            &metrics,
            "rally_collector_reports_rejected_total{reason=\"forbidden\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(!collector.has_reports_from("web-3").await);
    assert!(collector.log().contains("forbidden"), "{}", collector.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_ca_wrong_name_and_expired_certificates_fail_with_clear_logs() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"), &["localhost"], &["web-1"]);
    let other = make_pki(&dir.path().join("other"), &["localhost"], &["web-2"]);
    let collector = Collector::start(dir.path(), "127.0.0.1", &mtls_collector(&pki), None).await;
    let port = collector.grpc_port;

    // A client certificate from another CA: the collector names the cause.
    let stranger = Agent::start(
        dir.path(),
        "web-2",
        &[format!("https://localhost:{port}")],
        "200ms",
        &agent_tls(&pki, &other, "web-2"),
    );
    wait_for_log(
        "the collector's unknown-CA line",
        &collector.process,
        "unknown CA",
    )
    .await;
    wait_for_log(
        "the agent's refused-certificate line",
        &stranger.process,
        "refused this agent's certificate",
    )
    .await;

    // The agent trusts another CA than the collector's: it says so.
    let distrustful = Agent::start(
        dir.path(),
        "web-1",
        &[format!("https://localhost:{port}")],
        "200ms",
        &agent_tls(&other, &pki, "web-1"),
    );
    wait_for_log(
        "the agent's unknown-CA line",
        &distrustful.process,
        "not signed by a CA this agent trusts (unknown CA)",
    )
    .await;
    wait_for_log(
        "the collector's refused-by-client line",
        &collector.process,
        "the client refused this collector's certificate",
    )
    .await;

    // 127.0.0.1 is not a name of the collector's certificate.
    let misdialled = Agent::start(
        dir.path(),
        "web-1b",
        &[format!("https://127.0.0.1:{port}")],
        "200ms",
        &agent_tls(&pki, &pki, "web-1"),
    );
    wait_for_log(
        "the agent's wrong-name line",
        &misdialled.process,
        "(wrong name)",
    )
    .await;

    // An expired client certificate, signed by the right CA.
    let expired = dir.path().join("expired");
    write_expired_client(&pki, &expired, "web-1");
    let late = Agent::start(
        dir.path(),
        "web-1c",
        &[format!("https://localhost:{port}")],
        "200ms",
        &format!(
            "[tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.join("ca.pem").display(),
            expired.join("web-1.pem").display(),
            expired.join("web-1.key").display()
        ),
    );
    wait_for_log(
        "the agent's expired-certificate line",
        &late.process,
        "this agent's certificate expired on",
    )
    .await;
    // The agent does not even try; a client that does is refused by the collector,
    // which names the cause.
    let handshake = raw_handshake(
        port,
        &pki.join("ca.pem"),
        &expired.join("web-1.pem"),
        &expired.join("web-1.key"),
    )
    .await;
    assert!(handshake.is_err(), "an expired certificate was accepted");
    wait_for_log(
        "the collector's expired-certificate line",
        &collector.process,
        "the client certificate has expired",
    )
    .await;
    assert!(!collector.has_reports_from("web-1").await);
    assert!(!collector.has_reports_from("web-2").await);
}

/// Signs, with the CA of `pki`, a client certificate for `vm` that expired yesterday.
fn write_expired_client(pki: &Path, out: &Path, vm: &str) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(pki.join("ca.pem")).unwrap(),
        ca_key,
    )
    .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("rally://vm/{vm}").try_into().unwrap(),
    )];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(30);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(out.join(format!("{vm}.pem")), cert.pem()).unwrap();
    std::fs::write(out.join(format!("{vm}.key")), key.serialize_pem()).unwrap();
}

/// A TLS 1.2 handshake (the server checks the client's certificate before the
/// handshake ends) and one read, with the given client pair.
async fn raw_handshake(port: u16, ca: &Path, cert: &Path, key: &Path) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncReadExt;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(cert).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_server_certificate_is_taken_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"), &["localhost"], &["web-1"]);
    let collector = Collector::start(dir.path(), "127.0.0.1", &mtls_collector(&pki), None).await;
    // The agent dials an address the certificate does not name yet.
    let agent = Agent::start(
        dir.path(),
        "web-1",
        &[format!("https://127.0.0.1:{}", collector.grpc_port)],
        "200ms",
        &agent_tls(&pki, &pki, "web-1"),
    );
    wait_for_log("the wrong-name line", &agent.process, "(wrong name)").await;
    pki_force(&pki);
    collector.process.signal("HUP");
    wait_for_log("the reload", &collector.process, "configuration reloaded").await;
    eventually(
        Duration::from_secs(60),
        "web-1's reports after the reload",
        || collector.reports_from("web-1"),
    )
    .await;
}

fn pki_force(pki: &Path) {
    self::pki(
        pki,
        &[
            "server",
            "--name",
            "localhost",
            "--name",
            "127.0.0.1",
            "--force",
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_in_clear_is_accepted_from_loopback_and_refused_from_the_network() {
    let dir = tempfile::tempdir().unwrap();
    for vm in ["web-1", "web-2"] {
        std::fs::write(
            dir.path().join(format!("{vm}.token")),
            format!("token-of-{vm}\n"),
        )
        .unwrap();
    }
    let tokens = format!(
        "[auth]\nmode = \"token\"\n[[auth.tokens]]\nvm = \"web-1\"\nfile = \"{0}/web-1.token\"\n[[auth.tokens]]\nvm = \"web-2\"\nfile = \"{0}/web-2.token\"\n",
        dir.path().display()
    );
    let collector = Collector::start(dir.path(), "0.0.0.0", &tokens, None).await;
    let token_file = |vm: &str| {
        format!(
            "token_file = \"{}\"\n",
            dir.path().join(format!("{vm}.token")).display()
        )
    };
    let _local = Agent::start(
        dir.path(),
        "web-1",
        &[format!("http://127.0.0.1:{}", collector.grpc_port)],
        "200ms",
        &token_file("web-1"),
    );
    eventually(
        Duration::from_secs(30),
        "web-1's reports over loopback",
        || collector.reports_from("web-1"),
    )
    .await;

    // web-2 runs on a test host of its own, so its stream comes from the network.
    let pid = std::process::id();
    let host = Netns::create(&format!("rally-tls-{pid}"));
    let n = pid % 250;
    host.link_to_host(
        &format!("rtls{pid}"),
        &format!("10.213.{n}.1/30"),
        &format!("10.213.{n}.2/30"),
    );
    let host_addr = format!("10.213.{n}.1");
    let config = dir.path().join("agent-web-2.toml");
    std::fs::write(
        &config,
        format!(
            "vm_id = \"web-2\"\ncollectors = [\"http://{}:{}\"]\ninterval = \"200ms\"\n{}\n",
            host_addr,
            collector.grpc_port,
            token_file("web-2")
        ),
    )
    .unwrap();
    let mut cmd = host.command(&bin::path("rally-agent"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "info");
    let remote = RemoteAgent {
        process: Process::spawn(
            "rally-agent web-2",
            cmd,
            &dir.path().join("agent-web-2.log"),
        ),
    };
    wait_for_log(
        "the agent's in-clear warning",
        &remote.process,
        "WITHOUT TLS",
    )
    .await;
    wait_for_log(
        "the refusal of a token in clear",
        &remote.process,
        "a token sent in clear over the network is refused",
    )
    .await;
    let metrics = collector.metrics().await;
    assert!(
        sample(
            &metrics,
            "rally_collector_reports_rejected_total{reason=\"unauthenticated\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(!collector.has_reports_from("web-2").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_metrics_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(&dir.path().join("pki"), &["localhost"], &[]);
    let extra = format!(
        "[tls]\ncert_file = \"{0}/server.pem\"\nkey_file = \"{0}/server.key\"\nhttp = true\n",
        pki.display()
    );
    let ca = pki.join("ca.pem");
    let collector = Collector::start(dir.path(), "127.0.0.1", &extra, Some(&ca)).await;
    // Plain HTTP is no longer served.
    assert!(
        reqwest::get(collector.http.replace("https://", "http://") + "/metrics")
            .await
            .is_err()
    );

    let target = collector.http.trim_start_matches("https://");
    let prometheus = Prometheus::start(
        dir.path(),
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n      - targets: ['{target}']\n",
            ca.display()
        ),
    );
    let (server, api) = (&prometheus.process, prometheus.api.clone());
    let get = |url: String| async move {
        reqwest::get(url)
            .await
            .ok()?
            .json::<serde_json::Value>()
            .await
            .ok()
    };
    let up = eventually(Duration::from_secs(60), "a healthy HTTPS scrape", || {
        let api = api.clone();
        async move {
            let targets = get(format!("{api}/targets")).await?;
            let t = targets["data"]["activeTargets"].get(0)?.clone();
            let q = get(format!("{api}/query?query=rally_collector_reports_total")).await?;
            (t["health"] == "up" && q["data"]["result"].get(0).is_some()).then_some(t)
        }
    })
    .await;
    assert_eq!(up["scrapeUrl"], format!("https://{target}/metrics"), "{up}");
    assert_eq!(up["lastError"], "", "{up}\n{}", server.log());
}

/// An agent started inside a test host's namespace.
struct RemoteAgent {
    process: Process,
}
