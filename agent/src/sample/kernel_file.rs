//! A `/proc` or `/sys` file kept open and re-read from offset 0 at every sample.
//!
//! The kernel regenerates such a file's content on every read from offset 0, so one
//! open descriptor serves every sample. That saves the path walk, open and close (the
//! larger part of reading a small `/proc` file) and std's size probing, and keeps the
//! agent within its CPU budget per sample.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::SampleError;

/// Upper bound on what is read from one file, so a runaway file cannot grow the
/// agent's memory (`/proc/stat` on a 256-core VM is about 100 KiB).
const MAX_BYTES: usize = 4 << 20;

/// One kernel file, opened on first use and re-opened after an error.
#[derive(Debug)]
pub struct KernelFile {
    path: PathBuf,
    file: Option<File>,
}

impl KernelFile {
    /// A file at `path`, not opened yet.
    pub fn new(path: PathBuf) -> Self {
        Self { path, file: None }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the whole current content into `buf` (replacing what it held).
    pub fn read(&mut self, buf: &mut String) -> Result<(), SampleError> {
        let result = self.read_once(buf);
        if result.is_err() {
            // The next sample opens the file afresh (it may have been re-created).
            self.file = None;
        }
        result.map_err(|source| SampleError::Read {
            path: self.path.clone(),
            source,
        })
    }

    fn read_once(&mut self, buf: &mut String) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(File::open(&self.path)?),
        };
        // Read bytes into the String's own allocation, then check they are UTF-8.
        let mut bytes = std::mem::take(buf).into_bytes();
        bytes.clear();
        let result = read_all_at_zero(file, &mut bytes);
        match String::from_utf8(bytes) {
            Ok(text) => *buf = text,
            Err(e) => {
                let mut bytes = e.into_bytes();
                bytes.clear();
                // Keep the allocation for the next read.
                *buf = String::from_utf8(bytes).unwrap_or_default();
                result?;
                return Err(std::io::Error::new(ErrorKind::InvalidData, "not UTF-8"));
            }
        }
        result
    }
}

/// Reads from offset 0 to the end with positioned reads (no seek, no size probe).
fn read_all_at_zero(file: &File, bytes: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        if bytes.capacity() - bytes.len() < 1024 {
            bytes.reserve(bytes.capacity().max(4096));
        }
        let start = bytes.len();
        let spare = bytes.capacity() - start;
        bytes.resize(start + spare, 0);
        let n = loop {
            match file.read_at(&mut bytes[start..], start as u64) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(n) => {
                bytes.truncate(start + n);
                if n == 0 {
                    return Ok(());
                }
                if bytes.len() > MAX_BYTES {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        "file larger than 4 MiB",
                    ));
                }
            }
            Err(e) => {
                bytes.truncate(start);
                return Err(e);
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
        let mut file = KernelFile::new(path.clone());
        let mut buf = String::new();
        file.read(&mut buf).unwrap();
        assert_eq!(buf, "first version, rather long\n");
        // Rewritten in place (same inode), as the kernel regenerates /proc files.
        std::fs::write(&path, "second\n").unwrap();
        file.read(&mut buf).unwrap();
        assert_eq!(buf, "second\n");
    }

    #[test]
    fn reads_files_larger_than_the_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        let content: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &content).unwrap();
        let mut buf = String::with_capacity(16);
        KernelFile::new(path).read(&mut buf).unwrap();
        assert_eq!(buf, content);
    }

    #[test]
    fn a_missing_file_is_an_error_and_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later");
        let mut file = KernelFile::new(path.clone());
        let mut buf = String::new();
        let err = file.read(&mut buf).unwrap_err();
        assert!(
            matches!(&err, SampleError::Read { source, .. } if source.kind() == ErrorKind::NotFound)
        );
        std::fs::write(&path, "now\n").unwrap();
        file.read(&mut buf).unwrap();
        assert_eq!(buf, "now\n");
    }

    #[test]
    fn reads_real_proc_files_repeatedly() {
        let mut file = KernelFile::new("/proc/stat".into());
        let mut buf = String::new();
        for _ in 0..3 {
            file.read(&mut buf).unwrap();
            assert!(buf.starts_with("cpu "), "{buf}");
            assert!(buf.contains("\nbtime "));
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bin");
        std::fs::write(&path, [0xff, 0xfe, b'\n']).unwrap();
        let mut buf = String::new();
        assert!(KernelFile::new(path).read(&mut buf).is_err());
        assert!(buf.is_empty());
    }
}
