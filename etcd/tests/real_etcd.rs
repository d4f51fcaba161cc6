//! The client against a real single-member etcd (Debian's `etcd-server`), started on
//! loopback ports of its own in a temporary directory: leases, the election service and
//! fenced transactions as the collector uses them. A missing `etcd` binary fails the test
//! with the package to install.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the test failure report

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rally_etcd::{Etcd, EtcdError, Write, created_at};

struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn etcd() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .args(["--name", "solo", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("solo={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("etcd.log")).unwrap(),
        ))
        .spawn()
        .expect("`etcd` not found: install Debian's etcd-server (scripts/test does)");
    let server = Server {
        child,
        url,
        _dir: dir,
    };
    let client = Etcd::new(&[server.url.clone()], Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    while client.get("/ping").await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "etcd did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

#[tokio::test]
async fn a_campaign_leads_and_a_write_under_an_ended_term_is_refused() {
    let server = etcd().await;
    let c = Etcd::new(&[server.url.clone()], Duration::from_secs(2)).unwrap();

    let a = c.grant(5).await.unwrap();
    assert!(c.keep_alive(a).await.unwrap() > 0);
    let term_a = c.campaign("/test/leader", a, b"a".to_vec()).await.unwrap();
    let leader = c.leader("/test/leader").await.unwrap().unwrap();
    assert_eq!(leader.value, b"a");
    assert_eq!(leader.create_revision, term_a.rev);

    // A second candidate waits while the first leads.
    let b = c.grant(5).await.unwrap();
    let campaign_b = {
        let c = c.clone();
        tokio::spawn(async move { c.campaign("/test/leader", b, b"b".to_vec()).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!campaign_b.is_finished());

    // Under its term, a's write goes through.
    let put = |v: &str| Write::Put {
        key: "/test/state".into(),
        value: v.as_bytes().to_vec(),
    };
    let ok = c
        .txn(vec![created_at(&term_a.key, term_a.rev)], vec![put("a1")])
        .await
        .unwrap();
    assert!(ok.succeeded);

    // a's lease ends (as it does when a is stopped past its TTL): b leads, with a
    // higher token, and a's late write is refused.
    c.revoke(a).await.unwrap();
    let term_b = tokio::time::timeout(Duration::from_secs(5), campaign_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(term_b.rev > term_a.rev, "fencing tokens grow");
    let late = c
        .txn(vec![created_at(&term_a.key, term_a.rev)], vec![put("a2")])
        .await
        .unwrap();
    assert!(!late.succeeded);
    assert!(matches!(
        c.keep_alive(a).await,
        Err(EtcdError::LeaseExpired(_))
    ));
    assert_eq!(c.get("/test/state").await.unwrap().unwrap().value, b"a1");
    let kept = c
        .txn(vec![created_at(&term_b.key, term_b.rev)], vec![put("b1")])
        .await
        .unwrap();
    assert!(kept.succeeded);
    assert_eq!(
        c.get_prefix("/test/").await.unwrap().len(),
        2,
        "b's leader key and the state"
    );

    c.resign(term_b).await.unwrap();
    assert!(c.leader("/test/leader").await.unwrap().is_none());
}

#[tokio::test]
async fn an_unreachable_cluster_fails_within_the_deadline() {
    let port = free_port();
    let c = Etcd::new(
        &[format!("http://127.0.0.1:{port}")],
        Duration::from_millis(500),
    )
    .unwrap();
    let started = Instant::now();
    assert!(c.get("/x").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
}
