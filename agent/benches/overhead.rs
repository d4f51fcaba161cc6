//! What the agent costs the VM it watches, next to Debian's prometheus-node-exporter.
//!
//! An in-process tonic `Ingest` server on 127.0.0.1 acknowledges every report. The real
//! `rally-agent` binary reports to it while node_exporter (only the collectors for the
//! same signals) is scraped at the same interval. Printed, never asserted:
//!
//! - phase 1 (60 samples at 1 s): CPU per sample of each process, from utime+stime in
//!   `/proc/<pid>/stat` (clock ticks) and from the scheduler's nanosecond counters
//!   (`/proc/<pid>/task/*/schedstat`), their VmRSS, and the agent/node_exporter ratios;
//!   and beside them a floor thread doing only the I/O a sample needs ([`Floor`]);
//! - phase 2 (720 samples at 100 ms, a full default buffer's worth): the agent's RSS
//!   when its stream is up vs at the end;
//! - where the time goes: `Sampler::sample` alone, in this process, back to back (hot
//!   caches) and spaced by the interval (cold caches, as in the agent), from this
//!   thread's scheduler clock.
//!
//! Overrides for a quick run: `RALLY_BENCH_SAMPLES`, `RALLY_BENCH_INTERVAL_MS`,
//! `RALLY_BENCH_LONG_SAMPLES`, `RALLY_BENCH_LONG_INTERVAL_MS`, `RALLY_BENCH_NODE_EXPORTER`,
//! and `RALLY_BENCH_AGENT` (another agent binary, e.g. one built with other profile
//! settings).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rally_proto::v1 as pb;
use rally_proto::v1::ingest_server::{Ingest, IngestServer};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// The agent's overhead budget: CPU time per sample at the real interval...
const BUDGET_CPU_MS: f64 = 0.2;
/// ...and resident memory.
const BUDGET_RSS_KIB: u64 = 4 * 1024;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; this harness takes no arguments.
    let samples = env_u64("RALLY_BENCH_SAMPLES", 60)?;
    let interval = Duration::from_millis(env_u64("RALLY_BENCH_INTERVAL_MS", 1000)?);
    let long_samples = env_u64("RALLY_BENCH_LONG_SAMPLES", 720)?;
    let long_interval = Duration::from_millis(env_u64("RALLY_BENCH_LONG_INTERVAL_MS", 100)?);
    let node_exporter = std::env::var("RALLY_BENCH_NODE_EXPORTER")
        .unwrap_or_else(|_| "/usr/bin/prometheus-node-exporter".into());
    if !Path::new(&node_exporter).exists() {
        bail!("{node_exporter} is missing: apt-get install prometheus-node-exporter");
    }
    let agent_bin = std::env::var("RALLY_BENCH_AGENT")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rally-agent").into());
    let agent_bin = agent_bin.as_str();
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    let collector = Collector::start()?;

    println!("rally-agent overhead benchmark");
    println!("  agent:         {agent_bin}");
    println!("  node_exporter: {node_exporter}");
    println!(
        "  collector:     in-process tonic Ingest on {} (acks every report)",
        collector.addr
    );
    println!();

    // Phase 1: the real interval, side by side with node_exporter.
    let phase1 = {
        let mut agent = spawn_agent(agent_bin, work.path(), "phase1", collector.addr, interval)?;
        let exporter = NodeExporter::start(&node_exporter, work.path())?;
        let result = phase1(&collector, &agent, &exporter, samples, interval);
        let _ = agent.kill();
        let _ = agent.wait();
        drop(exporter);
        result?
    };
    phase1.print(samples, interval);

    // Phase 2: a full default buffer's worth of samples; does the agent grow?
    let phase2 = {
        let mut agent = spawn_agent(
            agent_bin,
            work.path(),
            "phase2",
            collector.addr,
            long_interval,
        )?;
        let result = phase2(&collector, &agent, long_samples);
        let _ = agent.kill();
        let _ = agent.wait();
        result?
    };
    phase2.print(long_samples, long_interval);

    sampler_alone(samples.min(100), interval.min(Duration::from_millis(200)))?;
    wakeup_floor(samples.min(10), interval)?;
    Ok(())
}

/// What merely waking up once per interval costs a thread on this machine: a floor
/// under any sampler's CPU per sample (on small VMs it is far from negligible).
fn wakeup_floor(wakeups: u64, interval: Duration) -> anyhow::Result<()> {
    let before = thread_cpu_ns()?;
    for _ in 0..wakeups {
        thread::sleep(interval);
    }
    let us = (thread_cpu_ns()? - before) as f64 / 1e3 / wakeups.max(1) as f64;
    println!(
        "  a thread that only sleeps {interval:?} and wakes ({wakeups} times): {us:8.1} us/wakeup"
    );
    Ok(())
}

/// The cost of reading and computing a sample, without the runtime and the network.
fn sampler_alone(spaced: u64, spacing: Duration) -> anyhow::Result<()> {
    let mut sampler = rally_agent::sample::Sampler::new(Path::new("/"));
    sampler.sample();
    let hot = 1000;
    let before = thread_cpu_ns()?;
    for _ in 0..hot {
        std::hint::black_box(sampler.sample());
    }
    let hot_us = (thread_cpu_ns()? - before) as f64 / 1e3 / hot as f64;
    // The scheduler's clock of a running thread is only brought up to date at ticks
    // and switches, too coarse for one sample: spaced samples are timed on the wall
    // clock (the sampler does not block, so wall ≈ CPU unless preempted).
    let mut cold = Duration::ZERO;
    for _ in 0..spaced {
        thread::sleep(spacing);
        let before = Instant::now();
        std::hint::black_box(sampler.sample());
        cold += before.elapsed();
    }
    let cold_us = cold.as_secs_f64() * 1e6 / spaced.max(1) as f64;
    println!();
    println!("where the time goes: Sampler::sample alone (in the bench process)");
    println!("  back to back ({hot} samples):        {hot_us:8.1} us/sample");
    println!("  one every {spacing:?} ({spaced} samples, wall clock): {cold_us:8.1} us/sample");
    Ok(())
}

/// The kernel files the agent reads at every sample, and whether the kernel generates
/// each a line at a time (read until a read returns nothing) or in one piece.
const SAMPLED_FILES: [(&str, bool); 9] = [
    ("/proc/stat", false),
    ("/proc/meminfo", false),
    ("/sys/devices/system/cpu/online", false),
    ("/proc/loadavg", false),
    ("/proc/pressure/cpu", false),
    ("/proc/pressure/memory", false),
    ("/proc/pressure/io", false),
    ("/proc/net/dev", true),
    ("/proc/diskstats", true),
];

/// Bytes a report takes on the wire (the encoded report and its gRPC and HTTP/2
/// headers), and an acknowledgement's.
const REPORT_WIRE_BYTES: usize = 720;
const ACK_WIRE_BYTES: usize = 20;

/// The least any agent could spend per sample on this machine, measured beside the
/// agent in phase 1: a thread that wakes at the interval, reads the same kernel files
/// (kept open, into reused buffers), writes a report's bytes to a loopback peer that
/// answers an ack's bytes, and reads the previous answer; nothing parsed, encoded or
/// scheduled. Its ticks fall half an interval after the agent's.
struct Floor {
    handle: thread::JoinHandle<anyhow::Result<f64>>,
}

impl Floor {
    fn start(ticks: u64, interval: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the floor's peer")?;
        let addr = listener.local_addr()?;
        thread::spawn(move || {
            // The peer: an ack's bytes for each read, until the floor thread hangs up.
            if let Ok((mut conn, _)) = listener.accept() {
                let _ = conn.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    if conn.write_all(&[0u8; ACK_WIRE_BYTES]).is_err() {
                        break;
                    }
                }
            }
        });
        let handle = thread::spawn(move || -> anyhow::Result<f64> {
            use std::os::unix::fs::FileExt;
            let files = SAMPLED_FILES
                .iter()
                .map(|(path, lines)| Ok((std::fs::File::open(path)?, *lines)))
                .collect::<std::io::Result<Vec<_>>>()
                .context("opening the sampled kernel files")?;
            let mut conn = TcpStream::connect(addr).context("connecting to the floor's peer")?;
            conn.set_nodelay(true)?;
            conn.set_nonblocking(true)?;
            let report = [0u8; REPORT_WIRE_BYTES];
            let mut buf = vec![0u8; 64 * 1024];
            let mut next = Instant::now() + interval / 2;
            let before = thread_cpu_ns()?;
            for _ in 0..ticks {
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                next += interval;
                for (file, lines) in &files {
                    let mut at = 0;
                    loop {
                        let n = file.read_at(&mut buf, at as u64)?;
                        at += n;
                        if n == 0 || !lines {
                            break;
                        }
                    }
                    std::hint::black_box(at);
                }
                // The previous tick's answer, as the agent reads acks on its tick.
                match conn.read(&mut buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e).context("reading the floor's answer"),
                }
                conn.write_all(&report)
                    .context("writing the floor's report")?;
            }
            Ok((thread_cpu_ns()? - before) as f64 / 1e6 / ticks.max(1) as f64)
        });
        Ok(Self { handle })
    }

    /// CPU ms per tick.
    fn finish(self) -> anyhow::Result<f64> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the floor thread panicked"))?
    }
}

/// CPU time of the calling thread so far, in ns (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string("/proc/thread-self/schedstat").context("reading schedstat")?;
    text.split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()
        .context("malformed schedstat")
}

struct Phase1 {
    /// The floor's CPU ms per tick ([`Floor`]).
    floor_ms: f64,
    agent_cpu: Cpu,
    exporter_cpu: Cpu,
    agent_rss: Memory,
    exporter_rss: Memory,
    agent_mappings: Mappings,
    scrapes: u64,
}

impl Phase1 {
    fn print(&self, samples: u64, interval: Duration) {
        let per = |ms: f64, n: u64| ms / n.max(1) as f64;
        let a_sched = per(self.agent_cpu.sched_ms, samples);
        let e_sched = per(self.exporter_cpu.sched_ms, self.scrapes);
        let a_ticks = per(self.agent_cpu.ticks_ms, samples);
        let e_ticks = per(self.exporter_cpu.ticks_ms, self.scrapes);
        println!(
            "phase 1: {samples} samples at {interval:?} (node_exporter scraped {} times)",
            self.scrapes
        );
        println!(
            "  {:<36} {:>12} {:>14} {:>8}",
            "", "rally-agent", "node_exporter", "ratio"
        );
        row("CPU ms/sample (schedstat, ns clock)", a_sched, e_sched, 3);
        row("CPU ms/sample (utime+stime, ticks)", a_ticks, e_ticks, 3);
        row(
            "VmRSS KiB",
            self.agent_rss.rss_kib as f64,
            self.exporter_rss.rss_kib as f64,
            0,
        );
        row(
            "  RssAnon KiB",
            self.agent_rss.anon_kib as f64,
            self.exporter_rss.anon_kib as f64,
            0,
        );
        row(
            "  RssFile KiB",
            self.agent_rss.file_kib as f64,
            self.exporter_rss.file_kib as f64,
            0,
        );
        row(
            "VmHWM KiB",
            self.agent_rss.hwm_kib as f64,
            self.exporter_rss.hwm_kib as f64,
            0,
        );
        row(
            "threads",
            self.agent_rss.threads as f64,
            self.exporter_rss.threads as f64,
            0,
        );
        row(
            "wake-ups (voluntary switches)/sample",
            per(self.agent_cpu.switches, samples),
            per(self.exporter_cpu.switches, self.scrapes),
            1,
        );
        let m = &self.agent_mappings;
        println!(
            "  rally-agent's VmRSS by mapping (KiB): its own file {} (code {}), shared libraries {} (libc {}), anonymous {}; PSS {}",
            m.exe_kib, m.exe_code_kib, m.libs_kib, m.libc_kib, m.anon_kib, m.pss_kib
        );
        println!(
            "  floor, the same minute (a thread waking at the interval, reading the same kernel files, sending a report's bytes on loopback, reading an ack's): {:.3} ms/tick; rally-agent {:.2}x it",
            self.floor_ms,
            a_sched / self.floor_ms.max(f64::MIN_POSITIVE)
        );
        println!(
            "  budget: CPU {a_sched:.3} ms/sample vs {BUDGET_CPU_MS} ms ({}); RSS {} KiB vs {BUDGET_RSS_KIB} KiB ({})",
            verdict(a_sched <= BUDGET_CPU_MS),
            self.agent_rss.rss_kib,
            verdict(self.agent_rss.rss_kib <= BUDGET_RSS_KIB)
        );
        println!();
    }
}

struct Phase2 {
    start: Memory,
    end: Memory,
    cpu: Cpu,
}

impl Phase2 {
    fn print(&self, samples: u64, interval: Duration) {
        println!("phase 2: {samples} samples at {interval:?} (rally-agent alone)");
        println!(
            "  VmRSS KiB: {} with the stream up -> {} after {samples} samples (growth {:+} KiB)",
            self.start.rss_kib,
            self.end.rss_kib,
            self.end.rss_kib as i64 - self.start.rss_kib as i64
        );
        println!(
            "  RssAnon KiB: {} -> {}; VmHWM KiB: {}",
            self.start.anon_kib, self.end.anon_kib, self.end.hwm_kib
        );
        println!(
            "  CPU ms/sample (schedstat): {:.3}; wake-ups/sample: {:.1}",
            self.cpu.sched_ms / samples.max(1) as f64,
            self.cpu.switches / samples.max(1) as f64
        );
        println!(
            "  budget: RSS {} KiB vs {BUDGET_RSS_KIB} KiB ({})",
            self.end.rss_kib,
            verdict(self.end.rss_kib <= BUDGET_RSS_KIB)
        );
    }
}

fn row(name: &str, agent: f64, exporter: f64, decimals: usize) {
    let ratio = if exporter > 0.0 {
        format!("{:.3}", agent / exporter)
    } else {
        "-".into()
    };
    println!("  {name:<36} {agent:>12.decimals$} {exporter:>14.decimals$} {ratio:>8}");
}

fn verdict(ok: bool) -> &'static str {
    if ok { "within budget" } else { "OVER BUDGET" }
}

fn phase1(
    collector: &Collector,
    agent: &Child,
    exporter: &NodeExporter,
    samples: u64,
    interval: Duration,
) -> anyhow::Result<Phase1> {
    // Measure from the first report on: the stream is up, start-up costs are behind.
    let first = collector.wait_for_report(None)?;
    let scraper = Scraper::start(exporter.addr, interval);
    let floor = Floor::start(samples, interval)?;
    let agent_before = Cpu::of(agent.id())?;
    let exporter_before = Cpu::of(exporter.child.id())?;
    let scrapes_before = scraper.count();
    collector.wait_for_report(Some(first + samples))?;
    let agent_cpu = Cpu::of(agent.id())?.since(&agent_before);
    let exporter_cpu = Cpu::of(exporter.child.id())?.since(&exporter_before);
    let scrapes = scraper.count() - scrapes_before;
    let agent_rss = Memory::of(agent.id())?;
    let exporter_rss = Memory::of(exporter.child.id())?;
    let agent_mappings = Mappings::of(agent.id())?;
    scraper.stop()?;
    let floor_ms = floor.finish()?;
    Ok(Phase1 {
        floor_ms,
        agent_cpu,
        exporter_cpu,
        agent_rss,
        exporter_rss,
        agent_mappings,
        scrapes,
    })
}

fn phase2(collector: &Collector, agent: &Child, samples: u64) -> anyhow::Result<Phase2> {
    let first = collector.wait_for_report(None)?;
    let start = Memory::of(agent.id())?;
    let cpu_before = Cpu::of(agent.id())?;
    collector.wait_for_report(Some(first + samples))?;
    Ok(Phase2 {
        start,
        end: Memory::of(agent.id())?,
        cpu: Cpu::of(agent.id())?.since(&cpu_before),
    })
}

fn env_u64(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

fn spawn_agent(
    bin: &str,
    dir: &Path,
    name: &str,
    collector: SocketAddr,
    interval: Duration,
) -> anyhow::Result<Child> {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "vm_id = \"bench-{name}\"\ncollectors = [\"http://{collector}\"]\ninterval = \"{}ms\"\n",
            interval.as_millis()
        ),
    )
    .context("writing the agent's config")?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))
        .context("creating the agent's log")?;
    Command::new(bin)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {bin}"))
}

/// CPU time a process used so far.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// utime + stime of `/proc/<pid>/stat`, in ms (10 ms resolution at 100 Hz).
    ticks_ms: f64,
    /// Sum of the first field of `/proc/<pid>/task/*/schedstat` (ns on CPU), in ms.
    sched_ms: f64,
    /// Voluntary context switches of all threads (how often the process slept and was
    /// woken), as f64 to divide.
    switches: f64,
}

impl Cpu {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .context("reading /proc/<pid>/stat")?;
        // The command name may contain spaces; fields resume after its ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
        let ticks: u64 = fields.get(11).zip(fields.get(12)).map_or(Ok(0), |(u, s)| {
            Ok::<_, std::num::ParseIntError>(u.parse::<u64>()? + s.parse::<u64>()?)
        })?;
        let ticks_ms = ticks as f64 * 1000.0 / procfs::ticks_per_second() as f64;
        let mut sched_ns = 0u64;
        let mut switches = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).context("listing threads")? {
            let task = task?.path();
            // A thread may exit between listing and reading.
            if let Ok(text) = std::fs::read_to_string(task.join("schedstat")) {
                sched_ns += first_number(&text);
            }
            // Only voluntary switches are wake-ups: the thread slept and was woken.
            // Involuntary ones are preemptions by whatever shares the cores.
            if let Ok(text) = std::fs::read_to_string(task.join("status")) {
                switches += text
                    .lines()
                    .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                    .map(first_number)
                    .sum::<u64>();
            }
        }
        Ok(Self {
            ticks_ms,
            sched_ms: sched_ns as f64 / 1e6,
            switches: switches as f64,
        })
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            ticks_ms: self.ticks_ms - before.ticks_ms,
            sched_ms: self.sched_ms - before.sched_ms,
            switches: self.switches - before.switches,
        }
    }
}

/// The first whitespace-separated number of a text, 0 if none.
fn first_number(text: &str) -> u64 {
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    anon_kib: u64,
    file_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

impl Memory {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context("reading /proc/<pid>/status")?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Self {
            rss_kib: field("VmRSS:"),
            anon_kib: field("RssAnon:"),
            file_kib: field("RssFile:") + field("RssShmem:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
        })
    }
}

/// Where a process's resident memory is, from `/proc/<pid>/smaps`: its own executable
/// (file pages faulted in by the code it runs), shared libraries (shared with every
/// process of the VM) and anonymous memory (heap, stacks, relocated data).
#[derive(Debug, Clone, Copy, Default)]
struct Mappings {
    exe_kib: u64,
    exe_code_kib: u64,
    libs_kib: u64,
    libc_kib: u64,
    anon_kib: u64,
    pss_kib: u64,
}

impl Mappings {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).context("reading exe")?;
        let exe = exe.to_string_lossy().into_owned();
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .context("reading /proc/<pid>/smaps")?;
        let mut out = Self::default();
        let mut add = |path: &str, executable: bool, rss: u64, anon: u64| {
            // Pages of a file mapping the process wrote (relocated data) are
            // anonymous: counted there, not with the file.
            let file = rss.saturating_sub(anon);
            out.anon_kib += anon;
            if path == exe {
                out.exe_kib += file;
                if executable {
                    out.exe_code_kib += file;
                }
            } else if path.starts_with('/') {
                out.libs_kib += file;
                if path.contains("/libc.so") {
                    out.libc_kib += file;
                }
            }
        };
        // Each mapping starts with "start-end perms offset dev inode [path]", followed
        // by "Key: value kB" lines.
        let (mut path, mut executable, mut rss, mut anon, mut pss) = ("", false, 0, 0, 0);
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if !first.ends_with(':') {
                add(path, executable, rss, anon);
                (rss, anon) = (0, 0);
                executable = words.next().is_some_and(|perms| perms.contains('x'));
                path = words.nth(3).unwrap_or("");
                continue;
            }
            let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Rss:" => rss = kib,
                "Anonymous:" => anon = kib,
                "Pss:" => pss += kib,
                _ => {}
            }
        }
        add(path, executable, rss, anon);
        out.pss_kib = pss;
        Ok(out)
    }
}

/// node_exporter on a free loopback port with only the collectors for the agent's
/// signals.
struct NodeExporter {
    child: Child,
    addr: SocketAddr,
}

impl NodeExporter {
    fn start(bin: &str, dir: &Path) -> anyhow::Result<Self> {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("node_exporter.log"))?;
        let child = Command::new(bin)
            .arg(format!("--web.listen-address={addr}"))
            .args([
                "--collector.disable-defaults",
                "--collector.cpu",
                "--collector.meminfo",
                "--collector.loadavg",
                "--collector.pressure",
                "--collector.netdev",
                "--collector.diskstats",
                "--collector.filesystem",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let exporter = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while scrape(addr).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "node_exporter did not answer on {addr}; see {}",
                    dir.join("node_exporter.log").display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(exporter)
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `GET /metrics`; returns the response's size.
fn scrape(addr: SocketAddr) -> anyhow::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    if !body.starts_with(b"HTTP/1.0 200") && !body.starts_with(b"HTTP/1.1 200") {
        bail!(
            "node_exporter answered {:?}",
            String::from_utf8_lossy(&body[..body.len().min(40)])
        );
    }
    Ok(body.len())
}

/// Scrapes node_exporter every interval, as Prometheus would.
struct Scraper {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<anyhow::Result<()>>,
}

impl Scraper {
    fn start(addr: SocketAddr, interval: Duration) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (count, stop) = (Arc::clone(&count), Arc::clone(&stop));
            thread::spawn(move || {
                let mut next = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    scrape(addr)?;
                    count.fetch_add(1, Ordering::SeqCst);
                    next += interval;
                    thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                Ok(())
            })
        };
        Self {
            count,
            stop,
            thread,
        }
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the scraper panicked"),
        }
    }
}

/// The in-process collector: acknowledges every report and tells the bench its seq.
struct Collector {
    addr: SocketAddr,
    reports: mpsc::Receiver<u64>,
}

struct Acker {
    reports: mpsc::Sender<u64>,
}

#[tonic::async_trait]
impl Ingest for Acker {
    type StreamStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reports = self.reports.clone();
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                if let Some(pb::agent_message::Kind::Report(report)) = message.kind {
                    let _ = reports.send(report.seq);
                    let ack = pb::CollectorMessage {
                        kind: Some(pb::collector_message::Kind::Ack(pb::Ack {
                            seq: report.seq,
                        })),
                    };
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl Collector {
    fn start() -> anyhow::Result<Self> {
        let (reports_tx, reports) = mpsc::channel();
        let (addr_tx, addr_rx) = mpsc::channel();
        thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx.send(listener.local_addr()?)?;
                tonic::transport::Server::builder()
                    .serve_with_incoming(
                        IngestServer::new(Acker {
                            reports: reports_tx,
                        }),
                        TcpListenerStream::new(listener),
                    )
                    .await?;
                Ok(())
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the in-process collector did not start")?;
        Ok(Self { addr, reports })
    }

    /// Waits for a report with `seq` (or, with `None`, the next report of a fresh run
    /// whose seq restarts at 1); returns its seq.
    fn wait_for_report(&self, seq: Option<u64>) -> anyhow::Result<u64> {
        loop {
            let got = self
                .reports
                .recv_timeout(Duration::from_secs(300))
                .context("no report from the agent for 5 minutes")?;
            match seq {
                None if got == 1 => return Ok(got),
                Some(want) if got >= want => return Ok(got),
                _ => {}
            }
        }
    }
}
