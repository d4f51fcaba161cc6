//! The Debian packages `scripts/package` built under `target/debian/`, which the
//! packaging and systemd tests install; a missing one fails the test with the
//! command to run.

use std::path::{Path, PathBuf};

/// The workspace version: every crate inherits it, so the packages carry it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The Debian revision `scripts/package` builds.
pub const REVISION: &str = "1";

/// The workspace's top directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_owned()
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, else `target/` in the workspace).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The path of a built package; panics with the command to run when it is missing.
pub fn deb(package: &str) -> PathBuf {
    let path = target_dir()
        .join("debian")
        .join(format!("{package}_{VERSION}-{REVISION}_amd64.deb"));
    assert!(
        path.is_file(),
        "{} not found: build the packages first with `scripts/package` (scripts/test does)",
        path.display()
    );
    path
}
