//! Who is speaking: `authorization: Bearer <token>` mapped to the one VM the token
//! belongs to (when `[auth] mode = "token"`).

use tonic::metadata::MetadataMap;

use crate::config::{AuthConfig, AuthMode};

/// What the caller proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: the caller may speak for any VM.
    Anyone,
    /// The caller holds this VM's token and may speak only for it.
    Vm(String),
}

/// Why a stream was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` header.
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("`authorization` metadata is not `Bearer <token>`")]
    Malformed,
    /// No VM has this token.
    #[error("unknown token")]
    Unknown,
}

/// Maps tokens to VMs.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    /// (token, vm). A list rather than a map: every entry is compared in constant time
    /// so that the time taken does not tell how much of a guess was right.
    tokens: Vec<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field(
                "vms",
                &self.tokens.iter().map(|(_, vm)| vm).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Authenticator {
    /// Reads the token files named by `[auth]`; the error names the file.
    pub fn from_config(config: &AuthConfig) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(config.tokens.len());
        if config.mode == AuthMode::Token {
            for (i, token) in config.tokens.iter().enumerate() {
                let secret =
                    rally_daemon::secret::read(&format!("auth.tokens[{i}].file"), &token.file)
                        .map_err(|e| e.to_string())?;
                tokens.push((secret.expose().as_bytes().to_vec(), token.vm.clone()));
            }
        }
        Ok(Self {
            mode: config.mode,
            tokens,
        })
    }

    /// Identifies the caller of a stream from its metadata.
    pub fn identify(&self, metadata: &MetadataMap) -> Result<Identity, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Identity::Anyone);
        }
        let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(AuthError::Malformed);
        }
        let token = token.trim().as_bytes();
        let mut found = None;
        for (candidate, vm) in &self.tokens {
            if constant_time_eq(candidate, token) {
                found = Some(vm);
            }
        }
        found
            .map(|vm| Identity::Vm(vm.clone()))
            .ok_or(AuthError::Unknown)
    }
}

/// Compares without an early exit (lengths are not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;

    fn with_tokens() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let mut tokens = Vec::new();
        for vm in ["web-1", "web-2"] {
            let file = dir.path().join(vm);
            std::fs::write(&file, format!("token-of-{vm}\n")).unwrap();
            tokens.push(TokenConfig {
                vm: vm.into(),
                file,
            });
        }
        let auth = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Token,
            tokens,
        })
        .unwrap();
        (dir, auth)
    }

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert("authorization", v.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_identify_their_vm() {
        let (_dir, auth) = with_tokens();
        assert_eq!(
            auth.identify(&metadata(Some("Bearer token-of-web-2"))),
            Ok(Identity::Vm("web-2".into()))
        );
        assert_eq!(
            auth.identify(&metadata(Some("bearer token-of-web-1"))),
            Ok(Identity::Vm("web-1".into()))
        );
        assert_eq!(auth.identify(&metadata(None)), Err(AuthError::Missing));
        assert_eq!(
            auth.identify(&metadata(Some("token-of-web-1"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.identify(&metadata(Some("Basic token-of-web-1"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth.identify(&metadata(Some("Bearer token-of-web-"))),
            Err(AuthError::Unknown)
        );
        assert!(!format!("{auth:?}").contains("token-of"));
    }

    #[test]
    fn no_auth_lets_anyone_in() {
        let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(auth.identify(&metadata(None)), Ok(Identity::Anyone));
    }
}
