//! Writes the man pages of `rally-agent` and `rally-collector` from their clap
//! definitions (`rally_agent::cli::Cli`, `rally_collector::cli::Cli`), so that a page
//! can never document an option the binary does not have.
//!
//! One page per binary (`rally-agent.1`) and one per subcommand
//! (`rally-agent-run.1`, ...), as git does. The binary's page gets the sections that
//! clap cannot know about: the files the package installs, the signals the daemon
//! handles, its environment.
//!
//! # Layout
//!
//! Everything is in this file: [`Page`] holds what clap does not know about a
//! binary, [`write_pages`] renders one binary's pages.
//!
//! Run by `scripts/package`:
//! `rally-man --out target/release/man --date 2026-11-24 --version 0.1.0`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};

/// Command line of the generator.
#[derive(Debug, Parser)]
#[command(about = "Writes the Rally man pages from the binaries' clap definitions")]
struct Args {
    /// Directory to write the `*.1` pages into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Date printed in the pages' footer (`YYYY-MM-DD`); the packaging uses the
    /// date of the latest changelog entry, so that a rebuild is reproducible.
    #[arg(long)]
    date: String,
    /// The version printed in the pages' footer (the workspace version).
    #[arg(long)]
    version: String,
}

/// What a binary's page says beyond its command line.
struct Page {
    /// Files the package installs or the daemon uses: (path, what it is).
    files: &'static [(&'static str, &'static str)],
    /// Signals the daemon handles: (signal, effect).
    signals: &'static [(&'static str, &'static str)],
    /// Environment variables it reads: (name, effect).
    environment: &'static [(&'static str, &'static str)],
    /// Related pages: (name, section).
    see_also: &'static [(&'static str, &'static str)],
}

const RUST_LOG: (&str, &str) = (
    "RUST_LOG",
    "Log filter, e.g. info (the default) or info,rally=debug. Logs go to standard \
     error, without colours unless it is a terminal; under systemd they are in the \
     journal (journalctl -u <unit>).",
);

const AGENT: Page = Page {
    files: &[
        (
            "/etc/rally/agent.toml",
            "The configuration: the collectors to report to, the sampling interval, \
             the buffer size, the name and labels of the VM. Every key is commented in the \
             shipped file. Check a change with rally-agent check-config before applying it.",
        ),
        (
            "/usr/lib/systemd/system/rally-agent.service",
            "The systemd unit (runs as the unprivileged user _rally). Local changes \
             belong in a drop-in: systemctl edit rally-agent.",
        ),
    ],
    signals: &[
        (
            "SIGHUP",
            "Re-reads the configuration file (systemctl reload rally-agent). A valid \
             file takes effect without dropping the streams to the collectors; an \
             invalid one is rejected with a log line naming the file, line and key, \
             and the running configuration stays.",
        ),
        ("SIGTERM, SIGINT", "Stops the agent."),
    ],
    environment: &[RUST_LOG],
    see_also: &[
        ("rally-collector", "1"),
        ("systemctl", "1"),
        ("journalctl", "1"),
    ],
};

const COLLECTOR: Page = Page {
    files: &[
        (
            "/etc/rally/collector.toml",
            "The configuration: listen addresses, ingest limits, authentication of the \
             agents, groups of VMs. Every key is commented in the shipped file. Check a \
             change with rally-collector check-config before applying it.",
        ),
        (
            "/var/lib/rally",
            "The persistent state (decisions, their evidence, cooldowns), owned by the \
             user _rally. Removed when the package is purged.",
        ),
        (
            "/usr/lib/systemd/system/rally-collector.service",
            "The systemd unit (runs as the unprivileged user _rally, may write only \
             /var/lib/rally). Local changes belong in a drop-in: systemctl edit \
             rally-collector.",
        ),
    ],
    signals: &[
        (
            "SIGHUP",
            "Re-reads the configuration file (systemctl reload rally-collector). A \
             valid file takes effect without dropping the streams of the agents; an invalid \
             one is rejected with a log line naming the file, line and key, and the \
             running configuration stays.",
        ),
        ("SIGTERM, SIGINT", "Stops the collector."),
    ],
    environment: &[RUST_LOG],
    see_also: &[
        ("rally-agent", "1"),
        ("systemctl", "1"),
        ("journalctl", "1"),
    ],
};

/// Common footer of every page.
struct Footer<'a> {
    date: &'a str,
    version: &'a str,
}

impl Footer<'_> {
    fn apply(&self, man: Man) -> Man {
        man.section("1")
            .date(self.date)
            .source(format!("Rally {}", self.version))
            .manual("Rally Manual")
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    let footer = Footer {
        date: &args.date,
        version: &args.version,
    };
    let mut written = Vec::new();
    written.extend(write_pages(
        rally_agent::cli::Cli::command(),
        &AGENT,
        &footer,
        &args.out,
    )?);
    written.extend(write_pages(
        rally_collector::cli::Cli::command(),
        &COLLECTOR,
        &footer,
        &args.out,
    )?);
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes `<name>.1` and one `<name>-<subcommand>.1` per visible subcommand into
/// `out`, and returns their paths.
fn write_pages(
    cmd: clap::Command,
    page: &Page,
    footer: &Footer<'_>,
    out: &Path,
) -> Result<Vec<PathBuf>> {
    // As clap_mangen::generate_to does: no `help` pseudo-subcommand, and build once
    // so that subcommands get their display names (`rally-agent-run`).
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let name = cmd.get_name().to_owned();
    anyhow::ensure!(
        cmd.get_version() == Some(footer.version),
        "{name} reports version {:?}, the workspace is {}: rebuild",
        cmd.get_version(),
        footer.version
    );

    let mut written = Vec::new();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let man = footer.apply(Man::new(sub.clone()));
        let mut text = Vec::new();
        man.render(&mut text)?;
        let mut extra = Roff::new();
        see_also(&mut extra, &[(name.as_str(), "1")]);
        // to_roff: the page already has roff's apostrophe preamble.
        text.extend_from_slice(extra.to_roff().as_bytes());
        written.push(write(out, &man.get_filename(), &text)?);
    }

    let man = footer.apply(Man::new(cmd.clone()));
    let mut text = Vec::new();
    man.render(&mut text)?;
    text.extend_from_slice(extra_sections(page).to_roff().as_bytes());
    written.push(write(out, &man.get_filename(), &text)?);
    Ok(written)
}

fn write(out: &Path, file_name: &str, text: &[u8]) -> Result<PathBuf> {
    let path = out.join(file_name);
    let mut file = fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    file.write_all(text)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

/// FILES, SIGNALS, ENVIRONMENT and SEE ALSO of a binary's page.
fn extra_sections(page: &Page) -> Roff {
    let mut roff = Roff::new();
    for (title, entries) in [
        ("FILES", page.files),
        ("SIGNALS", page.signals),
        ("ENVIRONMENT", page.environment),
    ] {
        roff.control("SH", [title]);
        for (term, text) in entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*text)]);
        }
    }
    see_also(&mut roff, page.see_also);
    roff
}

/// Appends a SEE ALSO section listing `pages` as `name(section)`.
fn see_also(roff: &mut Roff, pages: &[(&str, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut inlines = Vec::new();
    for (i, (name, section)) in pages.iter().enumerate() {
        if i > 0 {
            inlines.push(roman(", "));
        }
        inlines.push(italic(*name));
        inlines.push(roman(format!("({section})")));
    }
    roff.text(inlines);
}
