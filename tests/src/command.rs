//! Running an external command to completion: its output, success or a panic that
//! shows what it printed, and a time limit on every step.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// Runs `cmd` and returns its output; panics when it cannot start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` with `input` on its stdin and returns its output; panics when it cannot
/// start or take the input.
pub fn output_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("{cmd:?}: no stdin"))
        .write_all(input)
        .unwrap_or_else(|e| panic!("{cmd:?}: writing its input: {e}"));
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{cmd:?}: waiting: {e}"))
}

/// Runs `cmd`, panics with its output unless it succeeds, and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `[timeout --kill-after=10 secs] program args...`: every external step is bounded.
pub fn bounded(secs: u32, program: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=10")
        .arg(secs.to_string())
        .arg(program);
    cmd
}
