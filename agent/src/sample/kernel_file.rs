//! A `/proc` or `/sys` file kept open and re-read from offset 0 at every sample.
//!
//! The kernel regenerates such a file's content on every read from offset 0, so one
//! open descriptor serves every sample. That saves the path walk, open and close (the
//! larger part of reading a small `/proc` file) and std's size probing, and keeps the
//! agent within its CPU budget per sample. Each file keeps its own buffer, sized to
//! its content and never zeroed again, and a file the kernel produces in one piece is
//! read with one system call instead of two.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SampleError;

/// Upper bound on what is read from one file, so a runaway file cannot grow the
/// agent's memory (`/proc/stat` on a 256-core VM is about 100 KiB).
const MAX_BYTES: usize = 4 << 20;

/// A new file's buffer; it grows to the file's size at the first read.
const FIRST_BUFFER: usize = 1024;

/// How a file's end shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A read that returns less than asked reached the end: the kernel generates the
    /// whole file as one record (`/proc/stat`, `/proc/meminfo`, `/proc/loadavg`,
    /// `/proc/pressure/*`, a sysfs attribute), or it is a regular file.
    ShortRead,
    /// Only a read that returns nothing is the end: the kernel generates the file a
    /// record (a line) at a time and stops a read short before a record that does not
    /// fit (`/proc/net/dev`, `/proc/diskstats`).
    EmptyRead,
}

/// One kernel file, opened on first use and re-opened after an error.
#[derive(Debug)]
pub struct KernelFile {
    path: PathBuf,
    end: End,
    file: Option<File>,
    /// Holds the last content in its first `len` bytes. Its length is its capacity,
    /// zeroed once when it grows, so that a read writes into it without zeroing it.
    bytes: Vec<u8>,
    len: usize,
}

impl KernelFile {
    /// A file at `path` whose end shows as `end`, not opened yet.
    pub fn new(path: PathBuf, end: End) -> Self {
        Self {
            path,
            end,
            file: None,
            bytes: Vec::new(),
            len: 0,
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole current content and returns it as text.
    pub fn read(&mut self) -> Result<&str, SampleError> {
        self.read_bytes()?;
        std::str::from_utf8(&self.bytes[..self.len]).map_err(|_| SampleError::Read {
            path: self.path.clone(),
            source: std::io::Error::new(ErrorKind::InvalidData, "not UTF-8"),
        })
    }

    /// Reads the whole current content and returns its bytes, for a parser that scans
    /// bytes (and refuses what is not ASCII) without a UTF-8 check first.
    pub fn read_bytes(&mut self) -> Result<&[u8], SampleError> {
        if let Err(source) = self.read_once() {
            // The next sample opens the file afresh (it may have been re-created).
            self.file = None;
            self.len = 0;
            return Err(SampleError::Read {
                path: self.path.clone(),
                source,
            });
        }
        Ok(&self.bytes[..self.len])
    }

    /// Reads from offset 0 to the end with positioned reads (no seek, no size probe).
    fn read_once(&mut self) -> std::io::Result<()> {
        self.len = 0;
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(File::open(&self.path)?),
        };
        loop {
            if self.bytes.len() - self.len < FIRST_BUFFER {
                if self.bytes.len() >= MAX_BYTES {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "file larger than 4 MiB",
                    ));
                }
                let grown = (self.bytes.len() * 2).max(FIRST_BUFFER);
                self.bytes.resize(grown, 0);
            }
            let spare = &mut self.bytes[self.len..];
            let asked = spare.len();
            let n = loop {
                match file.read_at(spare, self.len as u64) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.len += n;
            if n == 0 || (n < asked && self.end == End::ShortRead) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_the_current_content_through_one_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "first version, rather long\n").unwrap();
        for end in [End::ShortRead, End::EmptyRead] {
            std::fs::write(&path, "first version, rather long\n").unwrap();
            let mut file = KernelFile::new(path.clone(), end);
            assert_eq!(file.read().unwrap(), "first version, rather long\n");
            // Rewritten in place (same inode), as the kernel regenerates /proc files.
            std::fs::write(&path, "second\n").unwrap();
            assert_eq!(file.read().unwrap(), "second\n");
        }
    }

    #[test]
    fn reads_files_larger_than_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let content: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &content).unwrap();
        for end in [End::ShortRead, End::EmptyRead] {
            let mut file = KernelFile::new(path.clone(), end);
            assert_eq!(file.read().unwrap(), content);
            assert_eq!(file.read().unwrap(), content);
        }
    }

    #[test]
    fn a_missing_file_is_an_error_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later");
        let mut file = KernelFile::new(path.clone(), End::ShortRead);
        let err = file.read().unwrap_err();
        assert!(
            matches!(&err, SampleError::Read { source, .. } if source.kind() == ErrorKind::NotFound)
        );
        std::fs::write(&path, "now\n").unwrap();
        assert_eq!(file.read().unwrap(), "now\n");
    }

    #[test]
    fn reads_real_proc_files_repeatedly() {
        let mut stat = KernelFile::new("/proc/stat".into(), End::ShortRead);
        for _ in 0..3 {
            let text = stat.read().unwrap();
            assert!(text.starts_with("cpu "), "{text}");
            assert!(text.contains("\nbtime "));
        }
        // A file read a line at a time, through a buffer smaller than the file: the
        // kernel stops each read before a line that does not fit, and every line
        // still arrives once, whole.
        let mut mounts = KernelFile::new("/proc/self/mountinfo".into(), End::EmptyRead);
        let text = mounts.read().unwrap().to_owned();
        assert!(text.len() > FIRST_BUFFER, "{} bytes", text.len());
        assert!(text.ends_with('\n'));
        assert!(
            text.lines().all(|l| l.split(' ').count() >= 10),
            "a line was cut: {text}"
        );
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let mut file = KernelFile::new(path.clone(), End::ShortRead);
        assert!(file.read().is_err());
        // Valid again, it reads.
        std::fs::write(&path, "ok\n").unwrap();
        assert_eq!(file.read().unwrap(), "ok\n");
    }
}
