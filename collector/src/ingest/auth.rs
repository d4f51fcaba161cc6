//! Who is speaking: `authorization: Bearer <token>` mapped to the one VM the token
//! belongs to (`[auth] mode = "token"`), or the VM named by the client certificate's
//! `rally://vm/<id>` URI SAN (`mode = "certificate"`).
//!
//! A token sent in clear from another machine is refused unless
//! `auth.allow_plaintext_tokens` says otherwise: anyone on the path could copy it.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use tonic::metadata::MetadataMap;

use crate::config::{AuthConfig, AuthMode};

/// What the caller proved about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: the caller may speak for any VM.
    Anyone,
    /// The caller holds this VM's token or certificate and may speak only for it.
    Vm(String),
}

/// What the connection tells about the caller, apart from its metadata.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Its address, when known.
    pub addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Its verified certificate chain (leaf first), with `tls.client_ca_file`.
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
}

impl Peer {
    /// Whether a secret sent by this peer crossed no network in clear.
    fn is_private(&self) -> bool {
        self.tls || self.addr.is_some_and(|a| a.ip().is_loopback())
    }
}

/// Why a stream was not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// A token over plaintext from another machine, without `allow_plaintext_tokens`.
    #[error(
        "a token sent in clear over the network is refused: connect with https:// (the collector's [tls]), or set auth.allow_plaintext_tokens = true on a trusted network"
    )]
    Plaintext,
    /// `mode = "certificate"` and the connection has no client certificate.
    #[error("no client certificate: this collector identifies agents by their TLS certificate")]
    NoCertificate,
    /// The client certificate names no (single, valid) VM.
    #[error("{0}")]
    NoVmInCertificate(String),
}

/// Maps tokens to VMs.
#[derive(Clone)]
pub struct Authenticator {
    mode: AuthMode,
    allow_plaintext_tokens: bool,
    /// (token, vm). A list rather than a map: every entry is compared in constant time
    /// so that the time taken does not tell how much of a guess was right.
    tokens: Vec<(Vec<u8>, String)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("allow_plaintext_tokens", &self.allow_plaintext_tokens)
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
            allow_plaintext_tokens: config.allow_plaintext_tokens,
            tokens,
        })
    }

    /// Identifies the caller of a stream from its metadata and its connection.
    pub fn identify(&self, metadata: &MetadataMap, peer: &Peer) -> Result<Identity, AuthError> {
        match self.mode {
            AuthMode::None => Ok(Identity::Anyone),
            AuthMode::Certificate => {
                let certs = peer.certs.as_ref().ok_or(AuthError::NoCertificate)?;
                let leaf = certs.first().ok_or(AuthError::NoCertificate)?;
                crate::tls::vm_of_certificate(leaf)
                    .map(Identity::Vm)
                    .map_err(AuthError::NoVmInCertificate)
            }
            AuthMode::Token => {
                if !self.allow_plaintext_tokens && !peer.is_private() {
                    return Err(AuthError::Plaintext);
                }
                self.identify_token(metadata)
            }
        }
    }

    fn identify_token(&self, metadata: &MetadataMap) -> Result<Identity, AuthError> {
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
            allow_plaintext_tokens: false,
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

    fn loopback() -> Peer {
        Peer {
            addr: Some("127.0.0.1:40000".parse().unwrap()),
            ..Peer::default()
        }
    }

    #[test]
    fn tokens_identify_their_vm() {
        let (_dir, auth) = with_tokens();
        let auth = |m: &MetadataMap| auth.identify(m, &loopback());
        assert_eq!(
            auth(&metadata(Some("Bearer token-of-web-2"))),
            Ok(Identity::Vm("web-2".into()))
        );
        assert_eq!(
            auth(&metadata(Some("bearer token-of-web-1"))),
            Ok(Identity::Vm("web-1".into()))
        );
        assert_eq!(auth(&metadata(None)), Err(AuthError::Missing));
        assert_eq!(
            auth(&metadata(Some("token-of-web-1"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth(&metadata(Some("Basic token-of-web-1"))),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            auth(&metadata(Some("Bearer token-of-web-"))),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn secrets_are_never_printed() {
        let (_dir, auth) = with_tokens();
        assert!(!format!("{auth:?}").contains("token-of"));
    }

    #[test]
    fn no_auth_lets_anyone_in() {
        let auth = Authenticator::from_config(&AuthConfig::default()).unwrap();
        assert_eq!(
            auth.identify(&metadata(None), &Peer::default()),
            Ok(Identity::Anyone)
        );
    }

    #[test]
    fn a_token_in_clear_is_accepted_only_from_loopback_or_over_tls() {
        let (_dir, auth) = with_tokens();
        let token = metadata(Some("Bearer token-of-web-1"));
        let web_1 = Ok(Identity::Vm("web-1".into()));
        let from = |addr: &str, tls| Peer {
            addr: Some(addr.parse().unwrap()),
            tls,
            certs: None,
        };
        assert_eq!(auth.identify(&token, &from("127.0.0.1:5000", false)), web_1);
        assert_eq!(auth.identify(&token, &from("[::1]:5000", false)), web_1);
        assert_eq!(auth.identify(&token, &from("10.0.0.7:5000", true)), web_1);
        assert_eq!(
            auth.identify(&token, &from("10.0.0.7:5000", false)),
            Err(AuthError::Plaintext)
        );
        assert_eq!(
            auth.identify(&token, &Peer::default()),
            Err(AuthError::Plaintext),
            "an unknown peer address is not loopback"
        );
        let mut allowed = auth.clone();
        allowed.allow_plaintext_tokens = true;
        assert_eq!(
            allowed.identify(&token, &from("10.0.0.7:5000", false)),
            web_1
        );
    }

    #[test]
    fn a_certificate_names_its_vm() {
        let auth = Authenticator::from_config(&AuthConfig {
            mode: AuthMode::Certificate,
            ..AuthConfig::default()
        })
        .unwrap();
        let cert = |uri: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
            params.self_signed(&key).unwrap().der().clone()
        };
        let with = |der| Peer {
            addr: None,
            tls: true,
            certs: Some(Arc::new(vec![der])),
        };
        assert_eq!(
            auth.identify(&metadata(None), &with(cert("rally://vm/db-1"))),
            Ok(Identity::Vm("db-1".into()))
        );
        assert!(matches!(
            auth.identify(&metadata(None), &with(cert("https://db-1"))),
            Err(AuthError::NoVmInCertificate(_))
        ));
        assert_eq!(
            auth.identify(&metadata(None), &Peer::default()),
            Err(AuthError::NoCertificate)
        );
    }
}
