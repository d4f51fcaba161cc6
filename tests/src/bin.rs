//! Locates Rally's binaries. Cargo sets `CARGO_BIN_EXE_<name>` only for the tests
//! of the package that owns a binary, so this crate finds them in the target
//! directory it was built into; `scripts/test` builds them first.

use std::path::PathBuf;

/// The path of a built workspace binary (`rally-agent`, `rally-collector`).
///
/// `RALLY_BIN_DIR` overrides the directory. Panics with the command to run when
/// the binary has not been built.
pub fn path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("RALLY_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test-binary> → target/<profile>
            let exe = std::env::current_exe().expect("current_exe");
            exe.parent()
                .and_then(|deps| deps.parent())
                .map(PathBuf::from)
                .expect("test binary lives in target/<profile>/deps")
        }
    };
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} not found: build the binaries first (`cargo build --bins`, which scripts/test does)",
        p.display()
    );
    p
}
