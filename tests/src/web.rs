//! Real web servers from Debian packages (nginx, Apache, php-fpm), each configured by
//! the test on loopback ports, with its pid file, logs and status endpoint in the
//! test's temporary directory (never the system instances), and a paced load
//! generator.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{free_port, tool};

/// The access-log format the servers write: combined plus the request time.
pub const NGINX_FORMAT: &str = r#"$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time"#;

fn run(program: &str, args: &[&str]) {
    let package = match program {
        "apache2" => "apache2",
        "php-fpm8.2" => "php-fpm",
        _ => program,
    };
    let path = tool::require(program, package);
    let out = Command::new(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An nginx master with its own config, on a loopback port.
pub struct Nginx {
    /// Its directory (config, pid, logs).
    pub dir: PathBuf,
    /// The port.
    pub port: u16,
    /// The access log.
    pub access_log: PathBuf,
    config: PathBuf,
}

impl Nginx {
    /// Writes the config under `dir` and starts nginx. `/status` is `stub_status` (not
    /// logged), `/` answers 200, `/error` 503; `fastcgi` optionally routes `/fpm-status`
    /// to a php-fpm on that port.
    pub fn start(dir: &Path, fastcgi: Option<u16>) -> Nginx {
        std::fs::create_dir_all(dir).expect("nginx dir");
        let port = free_port();
        let access_log = dir.join("access.log");
        let config = dir.join("nginx.conf");
        let fpm = fastcgi.map_or(String::new(), |p| {
            format!(
                "location = /fpm-status {{ access_log off; include /etc/nginx/fastcgi_params; fastcgi_param SCRIPT_NAME /fpm-status; fastcgi_param SCRIPT_FILENAME /fpm-status; fastcgi_pass 127.0.0.1:{p}; }}"
            )
        });
        let d = dir.display();
        let text = format!(
            r#"user root;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  log_format timed '{NGINX_FORMAT}';
  access_log {log} timed;
  server {{
    listen 127.0.0.1:{port};
    location = /status {{ stub_status; access_log off; }}
    location = /error {{ return 503 "down\n"; }}
    {fpm}
    location / {{ return 200 "ok\n"; }}
  }}
}}
"#,
            log = access_log.display()
        );
        std::fs::write(&config, text).expect("write nginx.conf");
        let n = Nginx {
            dir: dir.to_owned(),
            port,
            access_log,
            config,
        };
        n.start_again();
        n
    }

    /// Starts the master again (after [`Nginx::stop`]).
    pub fn start_again(&self) {
        run("nginx", &["-c", self.config_str()]);
        wait_for_port(self.port);
    }

    fn config_str(&self) -> &str {
        self.config.to_str().expect("utf-8 path")
    }

    /// `nginx -s <signal>` with this config (`reload`, `reopen`, `quit`).
    pub fn signal(&self, signal: &str) {
        run("nginx", &["-c", self.config_str(), "-s", signal]);
    }

    /// Stops it and waits until the port is closed.
    pub fn stop(&self) {
        self.signal("quit");
        wait_until_closed(self.port);
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-c", self.config_str(), "-s", "stop"])
            .output();
    }
}

/// An Apache with its own config (event MPM, mod_status), on a loopback port.
pub struct Apache {
    /// The port.
    pub port: u16,
    config: PathBuf,
}

impl Apache {
    /// Writes the config under `dir` and starts Apache; `/server-status` is mod_status.
    pub fn start(dir: &Path) -> Apache {
        std::fs::create_dir_all(dir).expect("apache dir");
        let port = free_port();
        let config = dir.join("apache2.conf");
        let m = "/usr/lib/apache2/modules";
        let d = dir.display();
        let text = format!(
            r#"ServerRoot {d}
ServerName localhost
LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule status_module {m}/mod_status.so
Listen 127.0.0.1:{port}
PidFile {d}/apache.pid
DefaultRuntimeDir {d}
ErrorLog {d}/error.log
User nobody
Group nogroup
ExtendedStatus On
DocumentRoot {d}/www
<Directory {d}/www>
  Require all granted
</Directory>
<Location /server-status>
  SetHandler server-status
  Require all granted
</Location>
"#
        );
        std::fs::create_dir_all(dir.join("www")).expect("www");
        std::fs::write(dir.join("www/index.html"), "ok\n").expect("index");
        // The workers (nobody) must reach the document root.
        let _ = Command::new("chmod").args(["755", &d.to_string()]).output();
        std::fs::write(&config, text).expect("write apache2.conf");
        let a = Apache { port, config };
        a.control("start");
        wait_for_port(port);
        a
    }

    /// `apache2 -f <config> -k <command>` (what `apachectl -k` runs).
    pub fn control(&self, command: &str) {
        run(
            "apache2",
            &["-f", self.config.to_str().expect("utf-8"), "-k", command],
        );
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        let _ = Command::new("apache2")
            .args(["-f", self.config.to_str().unwrap_or(""), "-k", "stop"])
            .output();
    }
}

/// A php-fpm master with one pool on a loopback port, its status at `/fpm-status`.
pub struct PhpFpm {
    /// The pool's FastCGI port.
    pub port: u16,
    pid: PathBuf,
}

impl PhpFpm {
    /// Writes the config under `dir` and starts php-fpm (as root: `-R`).
    pub fn start(dir: &Path) -> PhpFpm {
        std::fs::create_dir_all(dir).expect("php-fpm dir");
        let port = free_port();
        let pid = dir.join("php-fpm.pid");
        let config = dir.join("php-fpm.conf");
        let text = format!(
            "[global]\npid = {pid}\nerror_log = {d}/php-fpm.log\ndaemonize = yes\n\n[www]\nlisten = 127.0.0.1:{port}\npm = static\npm.max_children = 2\npm.status_path = /fpm-status\n",
            pid = pid.display(),
            d = dir.display()
        );
        std::fs::write(&config, text).expect("write php-fpm.conf");
        run("php-fpm8.2", &["-R", "-y", config.to_str().expect("utf-8")]);
        wait_for_port(port);
        PhpFpm { port, pid }
    }
}

impl Drop for PhpFpm {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid) {
            let _ = Command::new("kill").args(["-QUIT", pid.trim()]).output();
        }
    }
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never opened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until_closed(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends GET requests to `url` at `per_second`, on an absolute schedule (a late
/// request does not shift the next ones, and a stalled server gets no catch-up burst,
/// so the pace is never exceeded), until `stop` says so; returns how many were
/// answered (each checked to be an HTTP answer), and counts them in `answered` as
/// they come (on a loaded machine the pace is not kept: a test compares what was
/// answered between two of its readings, not the pace).
pub async fn load(
    url: String,
    per_second: u32,
    stop: tokio::sync::watch::Receiver<bool>,
    answered: Arc<AtomicU64>,
) -> u64 {
    // A new connection per request: a kept-alive one can be closed by a worker that a
    // reload or rotation retires just as a request goes out on it (IncompleteMessage),
    // which would be the test's failure, not the server's or the agent's.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0;
    while !*stop.borrow() {
        tick.tick().await;
        let resp = client
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("load request answered");
        let _ = resp.bytes().await.expect("load body");
        sent += 1;
        answered.store(sent, Ordering::Relaxed);
    }
    sent
}
