//! Following a log file across rotation: every complete line exactly once.
//!
//! - **rename + new file** (logrotate `create`, `mv` + `nginx -s reopen`): the renamed
//!   file stays open and is drained until it has been quiet for [`ROTATE_WAIT`] (workers
//!   may write to it until they reopen), while the new file is read from its start.
//! - **copytruncate**: a truncation is seen as the file being shorter than the read
//!   offset, or the bytes just before the offset no longer being the ones read there.
//!   What was appended between the last read and the copy is then read from the copy
//!   (`<path>.1`, logrotate's name, recognised by those same bytes), then the truncated
//!   file from its start. (Lines written between logrotate's copy and its truncation
//!   are in neither file: logrotate documents that loss.)
//! - **the file disappearing**: the open file is still read; when nothing is open the
//!   path is retried at every poll, and a file that appears is read from its start.
//!
//! Only the file present when the tailer starts is read from its end (unless
//! `from_start`): history is not replayed. A partial last line waits for its newline.
//! Reads are plain `pread`s of the page cache, done inline like the `/proc` reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a rotated-away file is still drained after it last grew.
pub const ROTATE_WAIT: Duration = Duration::from_secs(5);
/// Bytes read per poll and file at most; the rest waits for the next poll.
pub const MAX_READ_PER_POLL: u64 = 64 << 20;
/// A longer line is counted as one line but only its start is kept.
pub const MAX_LINE: usize = 64 << 10;
/// Bytes before the read offset compared to detect a truncation.
const FINGERPRINT: usize = 64;
/// Rotated files drained at once at most; an older one is closed early.
const MAX_DRAINING: usize = 4;
const CHUNK: usize = 64 << 10;

/// One open file and how far it has been read.
#[derive(Debug)]
struct Handle {
    file: File,
    dev: u64,
    ino: u64,
    offset: u64,
    /// The last bytes read, ending at `offset`.
    fingerprint: Vec<u8>,
    /// An incomplete last line.
    pending: Vec<u8>,
    /// When it last grew (for draining).
    grew: Instant,
}

/// Follows one log file.
#[derive(Debug)]
pub struct Tailer {
    path: PathBuf,
    copy_path: PathBuf,
    from_start: bool,
    started: bool,
    current: Option<Handle>,
    draining: Vec<Handle>,
    buffer: Vec<u8>,
}

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Poll {
    /// Whether a file is open (the path exists, or a rotated file is still drained).
    pub open: bool,
    /// Rotations seen (renames and truncations).
    pub rotations: u64,
}

impl Tailer {
    /// A tailer of `path`; nothing is read before the first [`Tailer::poll`].
    pub fn new(path: &Path, from_start: bool) -> Self {
        let mut copy = path.as_os_str().to_owned();
        copy.push(".1");
        Self {
            path: path.to_owned(),
            copy_path: PathBuf::from(copy),
            from_start,
            started: false,
            current: None,
            draining: Vec::new(),
            buffer: vec![0; CHUNK],
        }
    }

    /// Reads what was appended since the last poll, calling `line` for each complete
    /// line (without its newline).
    pub fn poll(&mut self, now: Instant, line: &mut impl FnMut(&[u8])) -> io::Result<Poll> {
        let mut poll = Poll::default();
        let first = !self.started;
        self.started = true;

        // Rotated files first: their lines are older.
        let mut i = 0;
        while i < self.draining.len() {
            let grown = read_new(&mut self.draining[i], &mut self.buffer, now, line)?;
            let quiet = !grown && now.duration_since(self.draining[i].grew) >= ROTATE_WAIT;
            if quiet || self.draining.len() > MAX_DRAINING {
                let mut done = self.draining.remove(i);
                flush(&mut done, line);
            } else {
                i += 1;
            }
        }

        let on_disk = match std::fs::metadata(&self.path) {
            Ok(m) => Some((m.dev(), m.ino())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(mut handle) = self.current.take() {
            match on_disk {
                Some((dev, ino)) if (dev, ino) != (handle.dev, handle.ino) => {
                    // Renamed away and replaced: drain the old one, read the new one whole.
                    read_new(&mut handle, &mut self.buffer, now, line)?;
                    self.draining.push(handle);
                    poll.rotations += 1;
                }
                None if handle.file.metadata()?.nlink() == 0
                    && !read_new(&mut handle, &mut self.buffer, now, line)?
                    && now.duration_since(handle.grew) >= ROTATE_WAIT =>
                {
                    // Deleted (not renamed) and quiet: let the disk space go.
                    flush(&mut handle, line);
                }
                _ => {
                    if self.truncated(&handle)? {
                        poll.rotations += 1;
                        self.recover_from_copy(&mut handle, line)?;
                        flush(&mut handle, line);
                        handle.offset = 0;
                        handle.fingerprint.clear();
                    }
                    read_new(&mut handle, &mut self.buffer, now, line)?;
                    self.current = Some(handle);
                }
            }
        }
        if self.current.is_none() && on_disk.is_some() {
            match File::open(&self.path) {
                Ok(file) => {
                    let meta = file.metadata()?;
                    let mut handle = Handle {
                        file,
                        dev: meta.dev(),
                        ino: meta.ino(),
                        offset: 0,
                        fingerprint: Vec::new(),
                        pending: Vec::new(),
                        grew: now,
                    };
                    if first && !self.from_start {
                        handle.offset = meta.len();
                        handle.fingerprint = read_fingerprint(&handle.file, handle.offset)?;
                    }
                    read_new(&mut handle, &mut self.buffer, now, line)?;
                    self.current = Some(handle);
                }
                // Gone between the stat and the open: the next poll tries again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        poll.open = self.current.is_some() || !self.draining.is_empty();
        Ok(poll)
    }

    /// Whether the open file was truncated under us (copytruncate).
    fn truncated(&self, handle: &Handle) -> io::Result<bool> {
        let len = handle.file.metadata()?.len();
        if len < handle.offset {
            return Ok(true);
        }
        if handle.fingerprint.is_empty() {
            return Ok(false);
        }
        Ok(read_fingerprint(&handle.file, handle.offset)? != handle.fingerprint)
    }

    /// Reads, from the rotated copy, what followed the last read before the truncation.
    fn recover_from_copy(
        &mut self,
        handle: &mut Handle,
        line: &mut impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let Ok(copy) = File::open(&self.copy_path) else {
            return Ok(());
        };
        let len = copy.metadata()?.len();
        if len < handle.offset || read_fingerprint(&copy, handle.offset)? != handle.fingerprint {
            tracing::warn!(
                path = %self.path.display(),
                "log truncated; no rotated copy with what followed the last read: lines written just before the truncation are not counted"
            );
            return Ok(());
        }
        let mut from_copy = Handle {
            file: copy,
            dev: 0,
            ino: 0,
            offset: handle.offset,
            fingerprint: Vec::new(),
            pending: std::mem::take(&mut handle.pending),
            grew: handle.grew,
        };
        read_new(&mut from_copy, &mut self.buffer, handle.grew, line)?;
        handle.pending = from_copy.pending;
        Ok(())
    }
}

/// The up to [`FINGERPRINT`] bytes before `offset`.
fn read_fingerprint(file: &File, offset: u64) -> io::Result<Vec<u8>> {
    let start = offset.saturating_sub(FINGERPRINT as u64);
    let mut bytes = vec![0; (offset - start) as usize];
    let mut read = 0;
    while read < bytes.len() {
        match file.read_at(&mut bytes[read..], start + read as u64)? {
            0 => {
                bytes.truncate(read);
                break;
            }
            n => read += n,
        }
    }
    Ok(bytes)
}

/// Reads `handle` from its offset to the end (at most [`MAX_READ_PER_POLL`]); returns
/// whether anything was read.
fn read_new(
    handle: &mut Handle,
    buffer: &mut [u8],
    now: Instant,
    line: &mut impl FnMut(&[u8]),
) -> io::Result<bool> {
    let start = handle.offset;
    while handle.offset - start < MAX_READ_PER_POLL {
        let n = match handle.file.read_at(buffer, handle.offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        handle.offset += n as u64;
        let chunk = &buffer[..n];
        let mut rest = chunk;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let part = &rest[..end];
            if handle.pending.is_empty() {
                line(trim_cr(part));
            } else {
                extend_bounded(&mut handle.pending, part);
                line(trim_cr(&handle.pending));
                handle.pending.clear();
            }
            rest = &rest[end + 1..];
        }
        extend_bounded(&mut handle.pending, rest);
        // Keep the fingerprint: the last bytes read.
        if n >= FINGERPRINT {
            handle.fingerprint.clear();
            handle
                .fingerprint
                .extend_from_slice(&chunk[n - FINGERPRINT..]);
        } else {
            handle.fingerprint.extend_from_slice(chunk);
            let excess = handle.fingerprint.len().saturating_sub(FINGERPRINT);
            handle.fingerprint.drain(..excess);
        }
    }
    let grown = handle.offset > start;
    if grown {
        handle.grew = now;
    }
    Ok(grown)
}

fn extend_bounded(pending: &mut Vec<u8>, part: &[u8]) {
    let room = MAX_LINE.saturating_sub(pending.len());
    pending.extend_from_slice(&part[..part.len().min(room)]);
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A file that will not grow any more: its incomplete last line still counts.
fn flush(handle: &mut Handle, line: &mut impl FnMut(&[u8])) {
    if !handle.pending.is_empty() {
        line(&handle.pending);
        handle.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Log {
        dir: tempfile::TempDir,
        path: PathBuf,
        next: u64,
    }

    impl Log {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("access.log");
            Self { dir, path, next: 0 }
        }

        /// Appends `n` numbered lines (O_APPEND, like a web server).
        fn write(&mut self, n: u64) {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .unwrap();
            for _ in 0..n {
                writeln!(f, "line {}", self.next).unwrap();
                self.next += 1;
            }
        }
    }

    fn poll(t: &mut Tailer, now: Instant) -> Vec<u64> {
        let mut got = Vec::new();
        t.poll(now, &mut |l: &[u8]| {
            let s = std::str::from_utf8(l).unwrap();
            got.push(s.strip_prefix("line ").unwrap().parse().unwrap());
        })
        .unwrap();
        got
    }

    #[test]
    fn starts_at_the_end_unless_told_and_waits_for_whole_lines() {
        let mut log = Log::new();
        log.write(5);
        let now = Instant::now();
        let mut t = Tailer::new(&log.path, false);
        assert_eq!(poll(&mut t, now), Vec::<u64>::new());
        log.write(2);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap();
        write!(f, "line 7").unwrap();
        assert_eq!(poll(&mut t, now), vec![5, 6]);
        writeln!(f).unwrap();
        log.next = 8;
        assert_eq!(poll(&mut t, now), vec![7]);

        let mut from_start = Tailer::new(&log.path, true);
        assert_eq!(poll(&mut from_start, now), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn rename_and_reopen_loses_and_repeats_nothing() {
        let mut log = Log::new();
        let t0 = Instant::now();
        let mut t = Tailer::new(&log.path, true);
        log.write(3);
        let mut seen = poll(&mut t, t0);
        // The server writes to the old file after the rename, until it reopens.
        let rotated = log.dir.path().join("access.log.1");
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&log.path)
            .unwrap();
        std::fs::rename(&log.path, &rotated).unwrap();
        writeln!(old, "line 3").unwrap();
        seen.extend(poll(&mut t, t0 + Duration::from_secs(1)));
        writeln!(old, "line 4").unwrap();
        log.next = 5;
        log.write(2); // the new file: 5, 6
        writeln!(old, "line 7").unwrap(); // a late worker
        seen.extend(poll(&mut t, t0 + Duration::from_secs(2)));
        log.next = 8;
        log.write(1);
        seen.extend(poll(&mut t, t0 + Duration::from_secs(3)));
        seen.sort_unstable();
        assert_eq!(seen, (0..9).collect::<Vec<_>>());
        // The old file is let go once quiet.
        poll(&mut t, t0 + Duration::from_secs(30));
        assert!(t.draining.is_empty());
    }

    #[test]
    fn copytruncate_reads_the_tail_from_the_copy_then_the_new_start() {
        let mut log = Log::new();
        let now = Instant::now();
        let mut t = Tailer::new(&log.path, true);
        log.write(10);
        assert_eq!(poll(&mut t, now).len(), 10);
        log.write(5); // 10..15: only in the copy after the rotation
        std::fs::copy(&log.path, log.dir.path().join("access.log.1")).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log.path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.write(20); // grows past the old offset: only the fingerprint tells
        let seen = poll(&mut t, now);
        assert_eq!(seen, (10..35).collect::<Vec<_>>());
        log.write(1);
        assert_eq!(poll(&mut t, now), vec![35]);
    }

    #[test]
    fn a_truncation_without_a_copy_restarts_at_zero() {
        let mut log = Log::new();
        let now = Instant::now();
        let mut t = Tailer::new(&log.path, true);
        log.write(4);
        assert_eq!(poll(&mut t, now).len(), 4);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log.path)
            .unwrap()
            .set_len(0)
            .unwrap();
        log.write(2);
        assert_eq!(poll(&mut t, now), vec![4, 5]);
    }

    #[test]
    fn survives_the_file_disappearing_and_reads_a_new_one_whole() {
        let mut log = Log::new();
        let now = Instant::now();
        let mut t = Tailer::new(&log.path, false);
        let mut nothing = |_: &[u8]| {};
        assert!(!t.poll(now, &mut nothing).unwrap().open, "no file yet");
        log.write(2); // appeared after the start: read whole
        assert_eq!(poll(&mut t, now), vec![0, 1]);
        std::fs::remove_file(&log.path).unwrap();
        assert_eq!(poll(&mut t, now), Vec::<u64>::new());
        // Deleted and quiet: let go.
        assert!(
            !t.poll(now + Duration::from_secs(60), &mut nothing)
                .unwrap()
                .open
        );
        log.write(3);
        let later = now + Duration::from_secs(61);
        assert_eq!(poll(&mut t, later), vec![2, 3, 4]);
        assert!(t.poll(later, &mut nothing).unwrap().open);
    }

    #[test]
    fn an_overlong_line_counts_once() {
        let log = Log::new();
        let now = Instant::now();
        let mut t = Tailer::new(&log.path, true);
        let long = "x".repeat(MAX_LINE * 3);
        std::fs::write(&log.path, format!("{long}\nshort\n")).unwrap();
        let mut lines = Vec::new();
        t.poll(now, &mut |l: &[u8]| lines.push(l.len())).unwrap();
        assert_eq!(lines, vec![MAX_LINE, 5]);
    }
}
