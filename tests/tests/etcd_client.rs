//! Rally's etcd client (`rally-etcd`) against real etcd members: leases, the election
//! service and fenced transactions as the collector uses them, and calls failing over
//! when a member dies.

use std::time::{Duration, Instant};

use rally_etcd::{Etcd, EtcdError, Write, created_at};
use rally_tests::etcd::Cluster;

fn put(v: &str) -> Write {
    Write::Put {
        key: "/test/state".into(),
        value: v.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn a_campaign_leads_and_a_write_under_an_ended_term_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::local(dir.path(), 1).await;
    let c = Etcd::new(&cluster.endpoints(), Duration::from_secs(2)).unwrap();

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
async fn calls_fail_over_when_a_member_dies_and_fail_in_time_without_quorum() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::local(dir.path(), 3).await;
    let c = Etcd::new(&cluster.endpoints(), Duration::from_secs(2)).unwrap();
    let ok = c.txn(Vec::new(), vec![put("1")]).await.unwrap();
    assert!(ok.succeeded);

    cluster.kill(0);
    // Some calls may still be on the dead member's connection; within a few seconds
    // every call goes to the two that remain.
    let started = Instant::now();
    let mut answered = 0;
    while answered < 10 {
        match c.get("/test/state").await {
            Ok(kv) => {
                assert_eq!(kv.unwrap().value, b"1");
                answered += 1;
            }
            Err(e) => {
                answered = 0;
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "no failover: {e}"
                );
            }
        }
    }

    // Without a quorum a write fails, within the deadline, instead of hanging.
    cluster.kill(1);
    let started = Instant::now();
    assert!(c.txn(Vec::new(), vec![put("2")]).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}
