//! `rally-collector pki`: the certificates of a Rally fleet without an outside PKI.
//!
//! Everything lives in one directory (`/etc/rally/pki` by default):
//!
//! | file | what | lifetime |
//! |---|---|---|
//! | `ca.pem`, `ca.key` | the CA that signs the two others | 10 years |
//! | `server.pem`, `server.key` | the collector's certificate, for the names agents dial | 2 years |
//! | `vms/<id>.pem`, `vms/<id>.key` | one VM's client certificate, URI SAN `rally://vm/<id>` | 2 years |
//!
//! Keys are ECDSA P-256, written mode 0600; certificates 0644. Nothing is overwritten
//! without `force`, and a set of files is checked before any of them is written. Each
//! file is written to a temporary file and renamed, so a reader never sees half of one.
//! A leaf never outlives its CA.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::tls::VM_URI_PREFIX;

/// Where `pki` reads and writes unless told otherwise.
pub const DEFAULT_DIR: &str = "/etc/rally/pki";
/// The CA's lifetime by default, in days (about 10 years).
pub const CA_DAYS: u32 = 3650;
/// A server or client certificate's lifetime by default, in days (2 years).
pub const LEAF_DAYS: u32 = 730;
/// Certificates start this long before they are made, so that a VM whose clock is a
/// little behind accepts them.
const BACKDATE: Duration = Duration::hours(1);

/// Why `pki` could not make a certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file would be overwritten.
    #[error("{} already exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA's files do not hold a usable CA.
    #[error("{}: {problem}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A name or VM id that cannot go into a certificate.
    #[error("{0}")]
    Name(String),
    /// rcgen refused to make the certificate.
    #[error("making the certificate: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// The files a `pki` subcommand wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

fn ca_paths(dir: &Path) -> Written {
    Written {
        cert: dir.join("ca.pem"),
        key: dir.join("ca.key"),
    }
}

/// The paths of the server certificate in `dir`.
pub fn server_paths(dir: &Path) -> Written {
    Written {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

/// The paths of `vm`'s client certificate in `dir`.
pub fn client_paths(dir: &Path, vm: &str) -> Written {
    let vms = dir.join("vms");
    Written {
        cert: vms.join(format!("{vm}.pem")),
        key: vms.join(format!("{vm}.key")),
    }
}

/// Makes a CA named `name` valid for `days`: `ca.pem` and `ca.key` in `dir`.
pub fn create_ca(dir: &Path, name: &str, days: u32, force: bool) -> Result<Written, PkiError> {
    let paths = ca_paths(dir);
    refuse_overwrite(&paths, force)?;
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    params.serial_number = Some(serial());
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_pair(&paths, &cert.pem(), &key.serialize_pem(), force)?;
    Ok(paths)
}

/// Makes the collector's certificate for `names` (DNS names or IP addresses agents
/// dial), signed by the CA in `dir`.
pub fn create_server(
    dir: &Path,
    names: &[String],
    days: u32,
    force: bool,
) -> Result<Written, PkiError> {
    let first = names
        .first()
        .ok_or_else(|| PkiError::Name("give at least one --name".into()))?;
    let paths = server_paths(dir);
    refuse_overwrite(&paths, force)?;
    let mut params = CertificateParams::new(names.to_vec())
        .map_err(|e| PkiError::Name(format!("--name: {e}")))?;
    params.distinguished_name = common_name(first);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sign_leaf(dir, params, days, &paths, force)?;
    Ok(paths)
}

/// Makes `vm`'s client certificate (URI SAN `rally://vm/<vm>`), signed by the CA in
/// `dir`.
pub fn create_client(dir: &Path, vm: &str, days: u32, force: bool) -> Result<Written, PkiError> {
    crate::vm_id::validate_id(vm).map_err(|why| PkiError::Name(format!("VM id {why}")))?;
    let paths = client_paths(dir, vm);
    refuse_overwrite(&paths, force)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(vm);
    let uri = format!("{VM_URI_PREFIX}{vm}");
    params.subject_alt_names = vec![SanType::URI(
        uri.try_into().map_err(|e| PkiError::Name(format!("{e}")))?,
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign_leaf(dir, params, days, &paths, force)?;
    Ok(paths)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// 16 random bytes, high bit clear so the integer stays positive.
fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Signs a leaf with the CA of `dir`, valid for `days` but not beyond the CA.
fn sign_leaf(
    dir: &Path,
    mut params: CertificateParams,
    days: u32,
    paths: &Written,
    force: bool,
) -> Result<(), PkiError> {
    let ca = ca_paths(dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| PkiError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let (ca_pem, ca_key) = (read(&ca.cert)?, read(&ca.key)?);
    let bad = |path: &Path, problem: String| PkiError::BadCa {
        path: path.to_owned(),
        problem,
    };
    let ca_key = KeyPair::from_pem(&ca_key)
        .map_err(|e| bad(&ca.key, format!("not a PEM private key: {e}")))?;
    let ca_der = rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| bad(&ca.cert, format!("not a PEM certificate: {e}")))?;
    let ca_not_after = ca_not_after(&ca_der).map_err(|e| bad(&ca.cert, e))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der, ca_key)
        .map_err(|e| bad(&ca.cert, format!("not a usable CA certificate: {e}")))?;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = (now + Duration::days(i64::from(days))).min(ca_not_after);
    if params.not_after <= now {
        return Err(bad(&ca.cert, "the CA has expired: make a new one".into()));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(serial());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(paths, &cert.pem(), &key.serialize_pem(), force)
}

fn ca_not_after(der: &rustls::pki_types::CertificateDer<'_>) -> Result<OffsetDateTime, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if !parsed.is_ca() {
        return Err("not a CA certificate".into());
    }
    Ok(parsed.validity().not_after.to_datetime())
}

fn refuse_overwrite(paths: &Written, force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    for path in [&paths.cert, &paths.key] {
        if path.exists() {
            return Err(PkiError::Exists(path.clone()));
        }
    }
    Ok(())
}

/// Writes the key (0600) then the certificate (0644), each atomically.
fn write_pair(paths: &Written, cert: &str, key: &str, force: bool) -> Result<(), PkiError> {
    write_file(&paths.key, key, 0o600, force)?;
    write_file(&paths.cert, cert, 0o644, force)
}

fn write_file(path: &Path, contents: &str, mode: u32, force: bool) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    // The temporary file is created 0600, so a key is never readable by others, even
    // for a moment.
    let mut file = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    file.write_all(contents.as_bytes()).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode)).map_err(io)?;
    let persisted = if force {
        file.persist(path).map(drop)
    } else {
        file.persist_noclobber(path).map(drop)
    };
    persisted.map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists(path.to_owned())
        } else {
            io(e.error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn a_ca_signs_a_server_and_a_client_with_modes_and_lifetimes() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "Rally CA", CA_DAYS, false).unwrap();
        let server = create_server(
            dir.path(),
            &["collector.example.org".into(), "10.0.0.5".into()],
            LEAF_DAYS,
            false,
        )
        .unwrap();
        let client = create_client(dir.path(), "web-1", LEAF_DAYS, false).unwrap();
        assert_eq!(client.cert, dir.path().join("vms/web-1.pem"));
        for w in [&ca, &server, &client] {
            assert_eq!(mode(&w.key), 0o600, "{}", w.key.display());
            assert_eq!(mode(&w.cert), 0o644, "{}", w.cert.display());
        }

        let vm = crate::tls::vm_of_certificate(&der(&client.cert)).unwrap();
        assert_eq!(vm, "web-1");

        // Both leaves verify against the CA, each for its own use.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der(&ca.cert)).unwrap();
        let roots = std::sync::Arc::new(roots);
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let now = rustls::pki_types::UnixTime::now();
        let servers = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        for name in ["collector.example.org", "10.0.0.5"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            servers
                .verify_server_cert(&der(&server.cert), &[], &name, &[], now)
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("other.example.org").unwrap();
        assert!(
            servers
                .verify_server_cert(&der(&server.cert), &[], &other, &[], now)
                .is_err()
        );
        let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        clients
            .verify_client_cert(&der(&client.cert), &[], now)
            .unwrap();

        let lifetime = |path: &Path| {
            let cert = der(path);
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
            let v = parsed.validity();
            (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
        };
        assert_eq!(lifetime(&ca.cert), i64::from(CA_DAYS));
        assert_eq!(lifetime(&client.cert), i64::from(LEAF_DAYS));
    }

    #[test]
    fn nothing_is_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = create_ca(dir.path(), "Rally CA", CA_DAYS, false).unwrap();
        let before = std::fs::read(&ca.key).unwrap();
        let err = create_ca(dir.path(), "Rally CA", CA_DAYS, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&ca.key).unwrap(), before);
        create_client(dir.path(), "web-1", 1, false).unwrap();
        assert!(matches!(
            create_client(dir.path(), "web-1", 1, false),
            Err(PkiError::Exists(_))
        ));
        create_client(dir.path(), "web-1", 1, true).unwrap();
        create_ca(dir.path(), "Rally CA", CA_DAYS, true).unwrap();
        assert_ne!(std::fs::read(&ca.key).unwrap(), before);
    }

    #[test]
    fn a_leaf_never_outlives_its_ca_and_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            create_client(dir.path(), "web-1", LEAF_DAYS, false),
            Err(PkiError::Io { .. })
        ));
        let ca = create_ca(dir.path(), "Rally CA", 10, false).unwrap();
        let client = create_client(dir.path(), "web-1", LEAF_DAYS, false).unwrap();
        let not_after = |path: &Path| {
            let cert = der(path);
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
            parsed.validity().not_after.timestamp()
        };
        assert!(not_after(&client.cert) <= not_after(&ca.cert));
        assert!(matches!(
            create_client(dir.path(), "bad id", 1, false),
            Err(PkiError::Name(_))
        ));
    }
}
