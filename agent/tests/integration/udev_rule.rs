//! The packaged udev rule that onlines hot-added CPUs and memory blocks, checked with
//! Debian 12's own udev (252, which has no `udevadm verify`):
//!
//! - the rule file parses: `udevadm test` reads it and says nothing else about it (an
//!   invalid key or operator is reported as `<file>:<line> Invalid ...`);
//! - it matches CPU and memory `add` events: a probe made from the rule's own lines, with
//!   only the "is it offline?" guard dropped and the write replaced by a property, sets
//!   that property for a real CPU and a real memory block of this machine (which are
//!   online, so the real rule rightly writes nothing), and not for the other kind;
//! - the real rule, run on those online devices, writes nothing.
//!
//! The rules directory is a temporary one bind-mounted over `/etc/udev/rules.d` in a
//! private mount namespace (`unshare -m`), so the machine's udev configuration is never
//! touched. Needs root and the `udev` package; a missing `udevadm` fails the test.

#![allow(missing_docs, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const RULE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../packaging/agent/60-rally-agent-hotplug.rules"
);
const RULE_NAME: &str = "60-rally-agent-hotplug.rules";

/// Runs `udevadm test --action=add <device>` with `rules_dir` as /etc/udev/rules.d.
fn udevadm_test(rules_dir: &Path, device: &Path) -> String {
    let script = format!(
        "mount --bind '{}' /etc/udev/rules.d && exec udevadm test --action=add '{}'",
        rules_dir.display(),
        device.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare runs (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "udevadm test failed (is the `udev` package installed, and are we root?):\n{text}"
    );
    text
}

/// A CPU that can be hot-unplugged (has an `online` file) and a memory block.
fn devices() -> (PathBuf, PathBuf) {
    let cpu = std::fs::read_dir("/sys/devices/system/cpu")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("cpu"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .find(|p| p.join("online").exists())
        .expect("a CPU with an online file (a VM with at least 2 vCPUs)");
    let memory = std::fs::read_dir("/sys/devices/system/memory")
        .expect("this kernel has memory hotplug sysfs")
        .map(|e| e.unwrap().path())
        .find(|p| p.join("state").exists())
        .expect("a memory block");
    (cpu, memory)
}

/// The rule's lines with the offline guard removed and the write replaced by a
/// property: what matches an `add` event of either kind, whatever its current state.
fn probe(rule: &str) -> String {
    let mut out = String::new();
    let mut writes = 0;
    for line in rule.lines() {
        let mut line = line.to_owned();
        for (guard, write, kind) in [
            ("ATTR{online}==\"0\", ", "ATTR{online}=\"1\"", "cpu"),
            (
                "ATTR{state}==\"offline\", ",
                "ATTR{state}=\"online\"",
                "memory",
            ),
        ] {
            if !line.trim_start().starts_with('#') && line.contains(write) {
                assert!(line.contains(guard), "the write in {line:?} has its guard");
                line = line
                    .replace(guard, "")
                    .replace(write, &format!("ENV{{RALLY_PROBE}}=\"{kind}\""));
                writes += 1;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    assert_eq!(
        writes, 2,
        "the rule writes a CPU's online and a block's state"
    );
    out
}

fn rules_dir(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(RULE_NAME), content).unwrap();
    dir
}

#[test]
fn the_hotplug_rule_is_valid_for_udev_252_and_matches_cpu_and_memory_add_events() {
    let version = Command::new("udevadm")
        .arg("--version")
        .output()
        .expect("udevadm is installed (Debian package `udev`)");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    println!("udevadm {version}");

    let rule = std::fs::read_to_string(RULE).unwrap();
    let (cpu, memory) = devices();

    // The real rule: read, nothing reported about it, nothing written on online devices.
    let real = rules_dir(&rule);
    for device in [&cpu, &memory] {
        let out = udevadm_test(real.path(), device);
        assert!(
            out.contains(&format!(
                "Reading rules file: /etc/udev/rules.d/{RULE_NAME}"
            )),
            "{out}"
        );
        let complaints: Vec<&str> = out
            .lines()
            .filter(|l| l.contains(RULE_NAME) && !l.starts_with("Reading rules file"))
            .collect();
        assert!(
            complaints.is_empty(),
            "udev reports on the rule for {}: {complaints:?}",
            device.display()
        );
    }

    // The probe: the same match keys fire for a CPU add and a memory add, each for its own.
    let probe_dir = rules_dir(&probe(&rule));
    let out = udevadm_test(probe_dir.path(), &cpu);
    assert!(
        out.contains("RALLY_PROBE=cpu"),
        "no match for {}:\n{out}",
        cpu.display()
    );
    assert!(!out.contains("RALLY_PROBE=memory"), "{out}");
    let out = udevadm_test(probe_dir.path(), &memory);
    assert!(
        out.contains("RALLY_PROBE=memory"),
        "no match for {}:\n{out}",
        memory.display()
    );
    assert!(!out.contains("RALLY_PROBE=cpu"), "{out}");

    // And not for other actions: the GOTO skips everything but `add`.
    let script = format!(
        "mount --bind '{}' /etc/udev/rules.d && exec udevadm test --action=change '{}'",
        probe_dir.path().display(),
        cpu.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("RALLY_PROBE"));
}

#[test]
fn a_broken_rule_would_be_caught() {
    // The check above must be able to fail: udev reports an invalid key with the file.
    let dir =
        rules_dir("SUBSYSTEM==\"cpu\", ACTION==\"add\", ATTRS{online}~\"0\", ATTR{online}=\"1\"\n");
    let (cpu, _) = devices();
    let out = udevadm_test(dir.path(), &cpu);
    assert!(
        out.lines()
            .any(|l| l.contains(RULE_NAME) && !l.starts_with("Reading rules file")),
        "udev said nothing about a broken rule:\n{out}"
    );
}
