//! A collector killed with SIGKILL under 50 real agents and started again: every
//! report the agents buffered meanwhile arrives, in order; none is lost, and each
//! collector applies each report once (the only reports both apply are the killed
//! one's last, whose acks died with it).

use rally_tests::eventually;
use rally_tests::ledger::{accepted, assert_contiguous, sample};
use rally_tests::rally::{Agent, Collector};
use std::collections::BTreeMap;
use std::time::Duration;

const AGENTS: usize = 50;
/// Reports each agent sends a second (interval 200 ms).
const PER_SECOND: u64 = 5;
/// How long nobody listens: 25 reports per agent, well within its buffer.
const OUTAGE: Duration = Duration::from_secs(5);
const BUFFER: u64 = 300;

/// VM → (run, seqs applied) from one collector log; panics if a VM has several runs.
fn by_vm(log: &str) -> BTreeMap<String, (String, Vec<u64>)> {
    let mut out = BTreeMap::new();
    for ((vm, run), seqs) in accepted(log) {
        let before = out.insert(vm.clone(), (run, seqs));
        assert!(before.is_none(), "{vm}: two runs in one collector's log");
    }
    out
}

/// Whether every VM has at least `n` reports applied in the collector's latest log.
fn every_vm_has(collector: &Collector, n: usize) -> Option<()> {
    let log = collector.logs().pop().unwrap_or_default();
    let vms = by_vm(&log);
    (vms.len() == AGENTS && vms.values().all(|(_, seqs)| seqs.len() >= n)).then_some(())
}

#[tokio::test(flavor = "multi_thread")]
async fn collector_sigkill_under_50_agents_loses_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(dir.path(), "").await;
    let agents: Vec<Agent> = (0..AGENTS)
        .map(|i| {
            Agent::start(
                dir.path(),
                &format!("vm-{i:02}"),
                &[collector.grpc_url()],
                "200ms",
                &format!("buffer_reports = {BUFFER}"),
            )
        })
        .collect();

    eventually(
        Duration::from_secs(60),
        "5 reports applied from every agent",
        || {
            let r = every_vm_has(&collector, 5);
            async move { r }
        },
    )
    .await;

    // How far behind the acks were just before the kill: each report carries how many
    // were un-acknowledged in its agent's buffer when it was sent.
    let before_kill = collector.get("/metrics").await;
    let buffered_at_kill: Vec<f64> = (0..AGENTS)
        .map(|i| {
            let vm = format!("vm-{i:02}");
            sample(
                &before_kill,
                "rally_vm_agent_buffered_reports",
                &[("vm", &vm)],
            )
            .unwrap_or(0.0)
        })
        .collect();
    collector.kill();
    tokio::time::sleep(OUTAGE).await;
    collector.start_again().await;
    // The replay (OUTAGE × 5 reports each) and then live reports again.
    let wanted = (OUTAGE.as_secs() * PER_SECOND + 10) as usize;
    eventually(
        Duration::from_secs(90),
        "the buffered reports and 10 more applied from every agent after the restart",
        || {
            let r = every_vm_has(&collector, wanted);
            async move { r }
        },
    )
    .await;
    for mut agent in agents {
        assert!(
            agent.process.is_running(),
            "agent died:\n{}",
            agent.process.log()
        );
        agent.process.terminate(Duration::from_secs(10));
    }
    // Nothing arrives any more: the counters and the log tell the same story.
    let metrics = collector.get("/metrics").await;
    collector.kill();

    let logs = collector.logs();
    assert_eq!(logs.len(), 2);
    let (before, after) = (by_vm(&logs[0]), by_vm(&logs[1]));
    assert_eq!(before.len(), AGENTS, "every agent reported before the kill");
    assert_eq!(
        after.len(),
        AGENTS,
        "every agent reported after the restart"
    );
    let mut repeated = 0;
    // The VM with the longest replay, to show in the output how far its acks lagged.
    let mut worst = (String::new(), 0, 0);
    for (vm, (run, first)) in &before {
        let (run_after, second) = &after[vm];
        assert_eq!(run, run_after, "{vm}: the same agent run on both sides");
        // Each collector applied its part once and in order.
        let last = assert_contiguous(&format!("{vm} before the kill"), first, 1);
        let resumed = second[0];
        assert_contiguous(&format!("{vm} after the restart"), second, resumed);
        // The restarted collector holds no sequence state, so the agent's replay starts
        // at its oldest report without an ack: the killed collector's last reports,
        // applied but not yet acknowledged when it died, come again (how many depends
        // on how far its acks lagged). Only those may: the replay must not start
        // after the killed collector's last report (a loss), and each collector
        // applied each report once.
        assert!(
            resumed <= last + 1,
            "{vm}: {} to {} lost across the restart",
            last + 1,
            resumed - 1
        );
        assert!(resumed >= 1);
        let again = last + 1 - resumed;
        assert!(
            again < BUFFER,
            "{vm}: the replay went back {again} reports, past the agent's buffer"
        );
        repeated += again;
        if again > worst.1 {
            worst = (vm.clone(), again, resumed);
        }

        let labels = [("vm", vm.as_str())];
        assert_eq!(
            sample(&metrics, "rally_vm_reports_lost_total", &labels),
            Some(0.0),
            "{vm}: lost reports"
        );
        assert_eq!(
            sample(&metrics, "rally_vm_agent_dropped_reports_total", &labels),
            Some(0.0),
            "{vm}: the agent dropped reports from its buffer"
        );
        assert_eq!(
            sample(&metrics, "rally_vm_reports_total", &labels),
            Some(second.len() as f64),
            "{vm}: the restarted collector counted each report it applied once"
        );
    }
    assert_eq!(
        sample(&metrics, "rally_collector_reports_lost_total", &[]),
        Some(0.0)
    );
    println!(
        "{AGENTS} agents: {repeated} reports applied by the killed collector, their acks lost with it, came again"
    );
    println!(
        "un-acknowledged reports in the agents' buffers shortly before the kill: max {}, total {}",
        buffered_at_kill.iter().copied().fold(0.0, f64::max),
        buffered_at_kill.iter().sum::<f64>()
    );
    let (vm, again, resumed) = worst;
    let applied_at = |seq: u64| {
        logs[0]
            .lines()
            .find(|l| {
                l.contains("report accepted")
                    && l.contains(&format!("vm={vm} "))
                    && l.split_whitespace().any(|w| w == format!("seq={seq}"))
            })
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_owned()
    };
    let last_line = logs[0].lines().last().unwrap_or("");
    if again > 0 {
        println!(
            "longest replay: {vm}, {again} reports from seq {resumed} (applied at {}); the killed collector's last line: {last_line}",
            applied_at(resumed)
        );
    }
}
