//! The command actuator: runs a program with the request as JSON on stdin and as
//! `RALLY_*` environment variables. Exit 0 = accepted; any other exit is a refusal (the
//! program may retry on its own); a time-out kills the program's whole process group.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{
    Actuator, ActuatorError, AttemptLog, AttemptResult, BoxFuture, ResizeRequest, Verdict, excerpt,
};

/// `[actuator]` with `kind = "command"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program (an absolute path, or a name looked up in `PATH`).
    pub program: PathBuf,
    /// Arguments passed before anything else.
    #[serde(default)]
    pub args: Vec<String>,
    /// After this the program and everything it started are killed ("60s").
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept in the record (the rest is read and dropped).
    #[serde(default = "default_output_limit")]
    pub output_limit: usize,
}

fn default_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_output_limit() -> usize {
    16 * 1024
}

/// The command actuator.
#[derive(Debug)]
pub struct CommandActuator {
    config: CommandConfig,
}

impl CommandActuator {
    /// Checks the config (the program is looked up when it runs).
    pub fn new(config: CommandConfig) -> Result<Self, ActuatorError> {
        if config.program.as_os_str().is_empty() {
            return Err(ActuatorError::Invalid {
                key: "program",
                reason: "must not be empty".into(),
            });
        }
        if config.timeout.is_zero() {
            return Err(ActuatorError::Invalid {
                key: "timeout",
                reason: "must be positive".into(),
            });
        }
        Ok(Self { config })
    }

    /// The `RALLY_*` variables for `r`.
    pub fn environment(r: &ResizeRequest) -> Vec<(&'static str, String)> {
        vec![
            ("RALLY_ID", r.id.clone()),
            ("RALLY_VM", r.vm.clone()),
            ("RALLY_GROUP", r.group.clone()),
            ("RALLY_DIRECTION", r.direction.as_str().to_owned()),
            ("RALLY_FROM_RUNG", r.from.rung.clone()),
            ("RALLY_FROM_VCPUS", r.from.vcpus.to_string()),
            ("RALLY_FROM_MEMORY_BYTES", r.from.memory_bytes.to_string()),
            ("RALLY_TO_RUNG", r.to.rung.clone()),
            ("RALLY_TO_VCPUS", r.to.vcpus.to_string()),
            ("RALLY_TO_MEMORY_BYTES", r.to.memory_bytes.to_string()),
            ("RALLY_TRIGGER", r.trigger.as_str().to_owned()),
            ("RALLY_REASON", r.reason.clone()),
            ("RALLY_DRY_RUN", r.dry_run.to_string()),
            (
                "RALLY_CREATED_AT",
                r.created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
            ("RALLY_FENCING_TOKEN", r.fencing_token.to_string()),
        ]
    }

    async fn run(&self, request: &ResizeRequest, body: &[u8]) -> (AttemptResult, bool) {
        let mut cmd = tokio::process::Command::new(&self.config.program);
        cmd.args(&self.config.args)
            .envs(Self::environment(request))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, so a time-out kills whatever it started too.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let error = format!("{}: {e}", self.config.program.display());
                return (AttemptResult::SpawnFailed { error }, false);
            }
        };
        let pid = child.id();
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let limit = self.config.output_limit;
        let work = async {
            let feed = async {
                if let Some(mut stdin) = stdin {
                    // A program that does not read its stdin is fine: ignore a broken pipe.
                    let _ = stdin.write_all(body).await;
                }
            };
            let (_, out, err, status) = tokio::join!(
                feed,
                bounded(stdout, limit),
                bounded(stderr, limit),
                child.wait()
            );
            (out, err, status)
        };
        match tokio::time::timeout(self.config.timeout, work).await {
            Ok((stdout, stderr, Ok(status))) => (
                AttemptResult::Exited {
                    code: status.code(),
                    stdout,
                    stderr,
                },
                false,
            ),
            Ok((_, _, Err(e))) => (
                AttemptResult::SpawnFailed {
                    error: format!("waiting for the program: {e}"),
                },
                false,
            ),
            Err(_) => {
                if let Some(pgid) = pid
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(rustix::process::Pid::from_raw)
                {
                    // The group may already be gone; nothing else to do then.
                    let _ =
                        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
                }
                let _ = child.kill().await;
                (
                    AttemptResult::Exited {
                        code: None,
                        stdout: String::new(),
                        stderr: String::new(),
                    },
                    true,
                )
            }
        }
    }
}

/// Reads `pipe` to its end, keeping the first `limit` bytes.
async fn bounded<R: AsyncRead + Unpin>(pipe: Option<R>, limit: usize) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    excerpt(&kept, limit)
}

impl Actuator for CommandActuator {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn send<'a>(
        &'a self,
        request: &'a ResizeRequest,
        attempts: &'a mut AttemptLog,
    ) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            let body = match serde_json::to_vec(request) {
                Ok(b) => b,
                Err(e) => {
                    let reason = format!("serializing the request: {e}");
                    return Verdict::Rejected { reason };
                }
            };
            let started_at = chrono::Utc::now();
            let t0 = Instant::now();
            let (result, timed_out) = self.run(request, &body).await;
            let duration = t0.elapsed();
            tracing::info!(id = %request.id, vm = %request.vm, ?result, timed_out, "command actuator");
            let verdict = match &result {
                _ if timed_out => Verdict::GaveUp {
                    reason: format!(
                        "killed after {}",
                        humantime::format_duration(self.config.timeout)
                    ),
                },
                AttemptResult::Exited { code: Some(0), .. } => Verdict::Accepted,
                AttemptResult::Exited { code, stderr, .. } => Verdict::Rejected {
                    reason: match code {
                        Some(c) => format!("exit code {c}: {}", stderr.trim()),
                        None => format!("killed by a signal: {}", stderr.trim()),
                    },
                },
                AttemptResult::SpawnFailed { error } => Verdict::GaveUp {
                    reason: error.clone(),
                },
                other => Verdict::GaveUp {
                    reason: format!("{other:?}"),
                },
            };
            attempts.record(started_at, duration, result).await;
            verdict
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::actuator::tests::{request, send};

    fn sh(script: &str, timeout: Duration) -> CommandActuator {
        CommandActuator::new(CommandConfig {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            timeout,
            output_limit: 1024,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn exit_zero_is_accepted_and_the_program_sees_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("stdin.json");
        let script = format!(
            "cat > {}; echo \"$RALLY_VM $RALLY_DIRECTION $RALLY_TO_VCPUS $RALLY_TO_MEMORY_BYTES $RALLY_ID\"",
            out.display()
        );
        let req = request();
        let outcome = send(&sh(&script, Duration::from_secs(10)), &req).await;
        assert_eq!(outcome.verdict, Verdict::Accepted);
        let AttemptResult::Exited {
            code: Some(0),
            stdout,
            ..
        } = &outcome.attempts[0].result
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(
            stdout.trim(),
            format!("web-1 up 4 {} {}", 8u64 << 30, req.id)
        );
        let seen: ResizeRequest = serde_json::from_slice(&std::fs::read(out).unwrap()).unwrap();
        assert_eq!(seen, req);
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_a_refusal_with_its_stderr() {
        let outcome = send(
            &sh("echo 'quota exceeded' >&2; exit 3", Duration::from_secs(10)),
            &request(),
        )
        .await;
        assert_eq!(
            outcome.verdict,
            Verdict::Rejected {
                reason: "exit code 3: quota exceeded".into()
            }
        );
    }

    #[tokio::test]
    async fn a_time_out_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let t0 = Instant::now();
        let outcome = send(&sh(&script, Duration::from_millis(500)), &request()).await;
        assert!(
            matches!(outcome.verdict, Verdict::GaveUp { ref reason } if reason.starts_with("killed after"))
        );
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not wait for the sleep"
        );
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let pid = rustix::process::Pid::from_raw(pid).unwrap();
        // The orphaned `sleep` is reaped by init shortly after SIGKILL; allow it a moment.
        let mut gone = false;
        for _ in 0..100 {
            if rustix::process::test_kill_process(pid).is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "the grandchild survived the time-out");
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let outcome = send(
            &sh(
                "head -c 1000000 /dev/zero | tr '\\0' x",
                Duration::from_secs(10),
            ),
            &request(),
        )
        .await;
        let AttemptResult::Exited { stdout, .. } = &outcome.attempts[0].result else {
            panic!()
        };
        assert_eq!(stdout.len(), 1024);
        assert_eq!(outcome.verdict, Verdict::Accepted);
    }

    #[tokio::test]
    async fn a_missing_program_is_reported() {
        let cmd = CommandActuator::new(CommandConfig {
            program: "/nonexistent/rally-resize".into(),
            args: vec![],
            timeout: Duration::from_secs(1),
            output_limit: 64,
        })
        .unwrap();
        let outcome = send(&cmd, &request()).await;
        assert!(
            matches!(outcome.verdict, Verdict::GaveUp { ref reason } if reason.contains("/nonexistent/rally-resize"))
        );
    }
}
