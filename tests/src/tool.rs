//! External programs the tests need. Under `scripts/test` every one of them is
//! installed; a missing one fails the test that needs it instead of skipping it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of `program` on `PATH` (or under /usr/sbin, /sbin); panics naming the
/// Debian package to install when it is missing.
pub fn require(program: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is required by this test but is not installed: \
         `apt-get install {debian_package}` (scripts/test installs it)"
    );
}

/// Runs `promtool check metrics` (Debian's `prometheus`) over an exposition `text` and
/// returns what it said; the caller decides how strict to be.
pub fn promtool_check_metrics(text: &str) -> Output {
    let promtool = require("promtool", "prometheus");
    crate::command::output_with_stdin(
        Command::new(promtool).args(["check", "metrics"]),
        text.as_bytes(),
    )
}
