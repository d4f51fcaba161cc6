//! Secret files: bearer tokens, webhook signing keys, cloud passwords.
//!
//! One rule for every secret of both daemons: the file holds the secret alone, at most
//! [`MAX_SECRET_BYTES`]; surrounding white space (the final newline an editor adds) is
//! trimmed; what is left must be non-empty and free of control characters. A file that
//! others may read is accepted with a warning, since refusing it would stop a fleet over
//! a mode bit. Errors name the configuration key and the file.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest secret file accepted.
pub const MAX_SECRET_BYTES: u64 = 4096;

/// A secret read from a file. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret file that cannot be used, naming the key that points to it and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key} = \"{}\": {problem}", path.display())]
pub struct SecretError {
    /// The configuration key naming the file (`token_file`, `actuator.secret_file`).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong, in words an admin can act on.
    pub problem: String,
}

/// Reads the secret in `path`, which the configuration key `key` names.
pub fn read(key: &str, path: &Path) -> Result<Secret, SecretError> {
    let fail = |problem: String| SecretError {
        key: key.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read its metadata: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(fail(format!(
            "{} bytes is too large for a secret (at most {MAX_SECRET_BYTES})",
            meta.len()
        )));
    }
    let mut text = String::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(fail("the file is empty; put the secret in it".into()));
    }
    if secret.chars().any(char::is_control) {
        return Err(fail(
            "the secret must be one line without control characters".into(),
        ));
    }
    if world_readable(&meta) {
        tracing::warn!(
            key,
            file = %path.display(),
            "secret file is readable by every user; chmod o-rwx it"
        );
    }
    Ok(Secret(secret.to_string()))
}

#[cfg(unix)]
fn world_readable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o004 != 0
}

#[cfg(not(unix))]
fn world_readable(_meta: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content).unwrap();
        f
    }

    #[test]
    fn trims_the_final_newline() {
        let f = file(b"s3cret with space\n");
        let s = read("token_file", f.path()).unwrap();
        assert_eq!(s.expose(), "s3cret with space");
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn empty_file_names_key_and_file() {
        let f = file(b"  \n");
        let err = read("actuator.secret_file", f.path())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("actuator.secret_file = \""), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn missing_file_names_key_and_file() {
        let err = read("actuator.password_file", Path::new("/nonexistent/rally"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("actuator.password_file"), "{err}");
        assert!(err.contains("/nonexistent/rally"), "{err}");
    }

    #[test]
    fn control_characters_and_huge_files_are_refused() {
        let f = file(b"two\nlines\n");
        assert!(
            read("k", f.path())
                .unwrap_err()
                .problem
                .contains("one line")
        );
        let f = file(&[b'a'; 5000]);
        assert!(
            read("k", f.path())
                .unwrap_err()
                .problem
                .contains("too large")
        );
    }
}
