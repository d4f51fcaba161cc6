//! Replays every fuzz corpus (`fuzz/corpus/<target>/`) on stable through the same
//! functions the nightly fuzz targets call (`rally_tests::fuzz`): no input may panic, and
//! a refused input must come back as a typed error with a message. A missing or empty
//! corpus fails, so a renamed target cannot silently replay nothing. The inputs that once
//! crashed a target (`fuzz/regressions/<target>/`, which `cargo fuzz cmin` never
//! prunes) are replayed with it.

use std::path::{Path, PathBuf};

use rally_tests::fuzz;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The corpus files of `target` (panics when there are none), then its regressions.
fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files =
        files_in(&dir).unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let regressions = fuzz_dir().join("regressions").join(target);
    if regressions.exists() {
        files.extend(files_in(&regressions).expect("read the regressions"));
    }
    files
}

/// Runs every file of `target`'s corpus; returns (accepted, refused).
fn replay(target: &str) -> (usize, usize) {
    let (_, run) = fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target}"));
    let (mut accepted, mut refused) = (0, 0);
    for file in corpus(target) {
        let data = std::fs::read(&file).expect("read a corpus file");
        let outcome = std::panic::catch_unwind(|| run(&data));
        match outcome {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty(), "{}: empty error", file.display());
                refused += 1;
            }
            Err(_) => panic!(
                "{} panicked {target} (see the message above)",
                file.display()
            ),
        }
    }
    (accepted, refused)
}

#[test]
fn every_target_has_a_corpus() {
    let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = fuzz::TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets, "one corpus directory per fuzz target");
    // Each target is a binary of the fuzz crate, named the same, that calls the function
    // replayed here.
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for target in targets {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        let source = fuzz_dir().join(format!("fuzz_targets/{target}.rs"));
        let source = std::fs::read_to_string(&source).expect("the fuzz target's source");
        assert!(
            source.contains(&format!("rally_tests::fuzz::{target}(data)")),
            "fuzz_targets/{target}.rs does not call rally_tests::fuzz::{target}"
        );
    }
}

#[test]
fn agent_config_corpus_replays() {
    let (accepted, _) = replay("agent_config");
    // The shipped agent.toml among them.
    assert!(accepted > 0, "no agent.toml in the corpus was accepted");
}

#[test]
fn collector_config_corpus_replays() {
    let (accepted, _) = replay("collector_config");
    assert!(accepted > 0, "no collector.toml in the corpus was accepted");
}

#[test]
fn report_corpus_replays() {
    let (accepted, _) = replay("report");
    assert!(
        accepted > 0,
        "no Hello or Report in the corpus was accepted"
    );
}

#[test]
fn access_log_corpus_replays() {
    let (accepted, _) = replay("access_log");
    assert!(accepted > 0, "no log format in the corpus compiled");
}

#[test]
fn status_pages_corpus_replays() {
    let (accepted, _) = replay("status_pages");
    assert!(accepted > 0, "no status page in the corpus was accepted");
}
