//! Request-source figures (printed, never asserted):
//!
//! - access-log throughput: lines per second tailed, parsed (combined + request time)
//!   and tallied on one core, from a generated file;
//! - CPU per sample of `Sources::sample` with an nginx `stub_status` (a real nginx from
//!   Debian, started on a loopback port with a config in a temporary directory) and an
//!   access log, on a current-thread runtime as in the agent, measured from this
//!   thread's `/proc/thread-self/schedstat` (ns on CPU).
//!
//! Run: `cargo bench -p rally-agent --bench sources`.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use rally_agent::source::access_log::{LogFormat, Tally};
use rally_agent::source::tail::Tailer;
use rally_agent::source::{SourceConfig, Sources};

const FORMAT: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time"#;

fn main() -> anyhow::Result<()> {
    access_log_throughput()?;
    sample_cost()
}

fn on_cpu_ns() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()
        .context("schedstat")
}

fn access_log_throughput() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("access.log");
    let lines = 1_000_000u64;
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    for i in 0..lines {
        writeln!(
            file,
            r#"10.0.{}.{} - - [10/Oct/2024:13:55:36 +0000] "GET /shop/racket?id={i} HTTP/1.1" {} 2326 "https://tennis.example/" "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0" 0.{:03}"#,
            i % 256,
            i % 199,
            [200, 200, 200, 304, 404, 502][(i % 6) as usize],
            i % 1000
        )?;
    }
    file.flush()?;
    drop(file);
    let format = LogFormat::compile(FORMAT).map_err(anyhow::Error::msg)?;
    // Warm the page cache, then measure.
    std::fs::read(&path)?;
    let mut tailer = Tailer::new(&path, true);
    let mut tally = Tally::default();
    let cpu0 = on_cpu_ns()?;
    let wall0 = Instant::now();
    // A poll reads at most 64 MiB: poll until the file is done.
    while tally.lines < lines {
        tailer.poll(Instant::now(), &mut |line: &[u8]| {
            tally.add(&format, std::str::from_utf8(line).unwrap_or(""));
        })?;
    }
    let cpu = Duration::from_nanos(on_cpu_ns()? - cpu0);
    let wall = wall0.elapsed();
    println!(
        "access log: {} lines ({} unparsed) in {:.3} s CPU ({:.3} s wall): {:.0} lines/s on one core (goal >= 50 000)",
        tally.lines,
        tally.unparsed,
        cpu.as_secs_f64(),
        wall.as_secs_f64(),
        tally.lines as f64 / cpu.as_secs_f64()
    );
    Ok(())
}

fn sample_cost() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path().display();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = dir.path().join("nginx.conf");
    std::fs::write(
        &config,
        format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f; uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n  log_format timed '{FORMAT}';\n  access_log {d}/access.log timed;\n  server {{ listen 127.0.0.1:{port}; location = /status {{ stub_status; access_log off; }} location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
        ),
    )?;
    let config = config.to_str().context("utf-8 path")?.to_owned();
    let status = Command::new("nginx")
        .args(["-c", &config])
        .status()
        .context("nginx (Debian package nginx) must be installed")?;
    anyhow::ensure!(status.success(), "nginx did not start");
    let stop = scopeguard(config.clone());
    std::thread::sleep(Duration::from_millis(300));

    #[derive(serde::Deserialize)]
    struct Wrapper {
        sources: Vec<SourceConfig>,
    }
    let w: Wrapper = toml::from_str(&format!(
        "[[sources]]\nname = \"nginx\"\nkind = \"nginx\"\nurl = \"http://127.0.0.1:{port}/status\"\n\n[[sources]]\nname = \"log\"\nkind = \"access_log\"\npath = \"{d}/access.log\"\nformat = '{FORMAT}'\n"
    ))?;
    let mut sources = Sources::new(&w.sources).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let samples = 200u64;
    let (cpu, lines) = runtime.block_on(async {
        // Some traffic so the log has lines to parse (~20 per sample).
        let client_lines = 20;
        sources.sample().await;
        let mut cpu = 0u64;
        let mut lines = 0u64;
        for _ in 0..samples {
            for _ in 0..client_lines {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                std::io::Read::read_to_end(&mut s, &mut Vec::new())?;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            let before = on_cpu_ns()?;
            let out = sources.sample().await;
            cpu += on_cpu_ns()? - before;
            lines += out[1].requests;
            anyhow::ensure!(out.iter().all(|s| s.up), "a source is down: {out:?}");
        }
        anyhow::Ok((cpu, lines))
    })?;
    drop(stop);
    println!(
        "Sources::sample with nginx stub_status + access log: {:.1} us CPU per sample ({samples} samples, {:.0} log lines per sample); the agent's budget is 200 us per sample in all",
        cpu as f64 / samples as f64 / 1000.0,
        lines as f64 / samples as f64
    );
    Ok(())
}

/// Stops the bench's nginx when dropped.
struct StopNginx(String);

impl Drop for StopNginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-c", &self.0, "-s", "stop"])
            .status();
    }
}

fn scopeguard(config: String) -> StopNginx {
    StopNginx(config)
}
