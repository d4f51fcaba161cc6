//! TLS to the collectors (`https://` addresses): the `[tls]` files, checked before they
//! are used, and handshake failures told in the admin's words.
//!
//! The files are read again at every connection, so renewed certificates are picked up
//! by the next stream (a reload that changes `[tls]` re-opens the streams at once). A
//! client certificate that has expired or is not valid yet is refused here, with its
//! dates, instead of letting the collector close the connection without a reason.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::config::TlsConfig;

/// A `[tls]` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} = \"{}\": {problem}", path.display())]
pub struct TlsError {
    /// The configuration key naming the file (`tls.cert_file`).
    pub key: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, and what to do.
    pub problem: String,
}

/// What the agent presents and trusts, read from the `[tls]` files.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// The CA(s) of `tls.ca_file` (PEM); `None`: the system's roots.
    ca: Option<Vec<u8>>,
    /// The client certificate chain and key (PEM), with its leaf for date checks.
    identity: Option<(Vec<u8>, Vec<u8>, CertificateDer<'static>)>,
    /// `tls.cert_file`, for messages.
    cert_path: Option<PathBuf>,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError {
        key,
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn certificates(
    key: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |problem: String| TlsError {
        key,
        path: path.to_owned(),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(problem("holds no `BEGIN CERTIFICATE` block".into()));
    }
    Ok(certs)
}

impl ClientTls {
    /// Reads and parses the files `[tls]` names (dates are checked at each connection,
    /// by [`check_dates`](ClientTls::check_dates)).
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let ca = match &config.ca_file {
            Some(path) => {
                let pem = read("tls.ca_file", path)?;
                certificates("tls.ca_file", path, &pem)?;
                Some(pem)
            }
            None => None,
        };
        let identity = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read("tls.cert_file", cert)?;
                let leaf = certificates("tls.cert_file", cert, &chain)?.swap_remove(0);
                let key_pem = read("tls.key_file", key)?;
                rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    TlsError {
                        key: "tls.key_file",
                        path: key.clone(),
                        problem: format!("no usable PEM private key: {e}"),
                    }
                })?;
                Some((chain, key_pem, leaf))
            }
            _ => None,
        };
        Ok(Self {
            ca,
            identity,
            cert_path: config.cert_file.clone(),
        })
    }

    /// Refuses a client certificate outside its validity period at `now`.
    pub fn check_dates(&self, now: SystemTime) -> Result<(), TlsError> {
        let (Some((_, _, leaf)), Some(path)) = (&self.identity, &self.cert_path) else {
            return Ok(());
        };
        let problem = |problem: String| TlsError {
            key: "tls.cert_file",
            path: path.clone(),
            problem,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| problem(format!("not an X.509 certificate: {e}")))?;
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let validity = parsed.validity();
        if now > validity.not_after.timestamp() {
            return Err(problem(format!(
                "this agent's certificate expired on {}; the collector would refuse it: renew it (rally-collector pki client <vm> --force)",
                validity.not_after
            )));
        }
        if now < validity.not_before.timestamp() {
            return Err(problem(format!(
                "this agent's certificate is not valid before {}: check this machine's clock",
                validity.not_before
            )));
        }
        Ok(())
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's TLS settings: the CA file or the system's roots, the client identity.
    pub fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new();
        let config = match &self.ca {
            Some(pem) => config.ca_certificate(Certificate::from_pem(pem)),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some((chain, key, _)) => config.identity(Identity::from_pem(chain, key)),
            None => config,
        }
    }
}

/// A TLS failure found anywhere in `error`'s chain, in the admin's words; `None` when
/// the error is not about TLS.
pub fn explain(error: &(dyn StdError + 'static)) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let tls = tls_cause(error)?;
    Some(match tls {
        // A CA of the same name but another key fails its signature, not the lookup.
        E::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "the collector's certificate is not signed by a CA this agent trusts (unknown CA): set tls.ca_file to the collector's CA (ca.pem)".into()
        }
        E::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            "the collector's certificate does not name the host in this collector address (wrong name): make it with `rally-collector pki server --name <that host>`, or use a name it has".into()
        }
        E::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "the collector's certificate has expired: renew it on the collector (rally-collector pki server --force) and reload it".into()
        }
        E::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "the collector's certificate is not valid yet: check the clocks".into()
        }
        E::InvalidCertificate(other) => format!("the collector's certificate was refused: {other:?}"),
        E::AlertReceived(
            alert @ (A::CertificateRequired
            | A::BadCertificate
            | A::UnknownCA
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::CertificateRevoked
            | A::DecryptError),
        ) => format!(
            "the collector refused this agent's certificate ({alert:?}): it needs tls.cert_file and tls.key_file signed by the collector's tls.client_ca_file, not expired"
        ),
        E::InvalidMessage(_) => {
            "the collector does not speak TLS here: use http:// for a collector without [tls]".into()
        }
        other => format!("TLS with the collector failed: {other}"),
    })
}

fn tls_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // io::Error hides its payload from `source()`: look inside.
        if let Some(tls) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        next = error.source();
    }
    None
}

/// Whether `address` (`http://host:port`) names this machine, where plaintext crosses
/// no network.
pub fn is_loopback(address: &str) -> bool {
    let Ok(uri) = address.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let Some(host) = uri.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_recognised() {
        assert!(is_loopback("http://127.0.0.1:9470"));
        assert!(is_loopback("http://127.8.0.1:9470"));
        assert!(is_loopback("http://[::1]:9470"));
        assert!(is_loopback("http://localhost:9470"));
        assert!(!is_loopback("http://10.0.0.1:9470"));
        assert!(!is_loopback("http://collector.example.org:9470"));
        assert!(!is_loopback("not a uri"));
    }

    #[test]
    fn tls_causes_are_found_inside_io_errors_and_explained() {
        let wrapped = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let said = explain(&wrapped).unwrap();
        assert!(
            said.contains("unknown CA") && said.contains("tls.ca_file"),
            "{said}"
        );
        let alert = std::io::Error::other(rustls::Error::AlertReceived(
            rustls::AlertDescription::CertificateRequired,
        ));
        assert!(
            explain(&alert)
                .unwrap()
                .contains("refused this agent's certificate")
        );
        assert!(explain(&std::io::Error::other("connection refused")).is_none());
    }

    #[test]
    fn missing_or_wrong_files_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let config = TlsConfig {
            ca_file: Some(not_pem),
            ..TlsConfig::default()
        };
        let err = ClientTls::load(&config).unwrap_err().to_string();
        assert!(err.starts_with("tls.ca_file = \""), "{err}");
        assert!(err.contains("no `BEGIN CERTIFICATE`"), "{err}");
        let config = TlsConfig {
            cert_file: Some(dir.path().join("missing.pem")),
            key_file: Some(dir.path().join("missing.key")),
            ..TlsConfig::default()
        };
        let err = ClientTls::load(&config).unwrap_err().to_string();
        assert!(err.starts_with("tls.cert_file = \""), "{err}");
    }
}
