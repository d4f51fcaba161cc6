//! TLS on the collector's listeners: the `[tls]` certificate, the agents' identity in
//! their client certificates, and the handshakes of accepted connections.
//!
//! - [`ServerTls`]: the rustls configurations built from the files of `[tls]` (gRPC
//!   with ALPN `h2` and, with `tls.http`, HTTP/1.1), read again on every reload.
//!
//! It knows files, not the configuration's types, so that `config` can check the
//! files with it.
//! - [`Acceptor`]: the handshake of one accepted TCP stream with the configuration in
//!   force; a reload swaps it without touching open connections.
//! - [`Handshakes`]: the gRPC listener's accepted streams in, finished TLS streams out
//!   (a `Stream` for tonic). Each handshake runs on its own task with a deadline, so a
//!   peer that connects and says nothing holds one task, never the accept loop. The
//!   HTTP listener runs [`Acceptor::handshake`] on each connection's own task.
//! - [`vm_of_certificate`]: the VM a client certificate speaks for, from its URI SAN
//!   `rally://vm/<id>` ([`VM_URI_PREFIX`]); `rally-collector pki client` writes it.
//!
//! A failed handshake is logged with what went wrong in the admin's words (expired,
//! unknown CA, no certificate, not TLS at all), since the agent would otherwise only
//! see an opaque transport error.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_util::{Stream, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// The URI SAN that binds a client certificate to a VM: `rally://vm/<id>`.
pub const VM_URI_PREFIX: &str = "rally://vm/";
/// How long a client has to finish its TLS handshake after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most per listener; connections beyond wait in the kernel's
/// backlog, so a flood of silent peers cannot exhaust memory.
const MAX_HANDSHAKES: usize = 1024;
/// Finished handshakes waiting for the server to take them.
const READY_QUEUE: usize = 64;
/// A pause after a failed accept (out of descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{key} = \"{}\": {problem}", path.display())]
pub struct TlsError {
    /// The configuration key naming the file (`tls.cert_file`).
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it, and what to do.
    pub problem: String,
}

impl TlsError {
    fn new(key: &str, path: &Path, problem: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(key, path, e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            key,
            path,
            "holds no `BEGIN CERTIFICATE` block",
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn read_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::new(key, path, e.to_string()))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| TlsError::new(key, path, format!("no usable PEM private key: {e}")))
}

/// Refuses a certificate outside its validity period at `now`, saying when it was.
pub fn check_validity(
    key: &str,
    path: &Path,
    cert: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::new(key, path, format!("not an X.509 certificate: {e}")))?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = parsed.validity();
    if now > validity.not_after.timestamp() {
        return Err(TlsError::new(
            key,
            path,
            format!(
                "the certificate expired on {}: renew it (rally-collector pki)",
                validity.not_after
            ),
        ));
    }
    if now < validity.not_before.timestamp() {
        return Err(TlsError::new(
            key,
            path,
            format!(
                "the certificate is not valid before {}: check this machine's clock",
                validity.not_before
            ),
        ));
    }
    Ok(())
}

/// The VM a client certificate speaks for: the id in its one `rally://vm/<id>` URI SAN.
pub fn vm_of_certificate(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's subjectAltName does not parse: {e}"))?;
    let mut vms = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(VM_URI_PREFIX),
            _ => None,
        });
    let vm = vms.next().ok_or_else(|| {
        format!("the client certificate has no `{VM_URI_PREFIX}<id>` URI SAN naming its VM")
    })?;
    if vms.next().is_some() {
        return Err(format!(
            "the client certificate has several `{VM_URI_PREFIX}` URI SANs; it must name one VM"
        ));
    }
    crate::vm_id::validate_id(vm).map_err(|why| format!("the certificate's VM id {why}"))?;
    Ok(vm.to_owned())
}

/// The files of `[tls]`.
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// `tls.cert_file`.
    pub cert: &'a Path,
    /// `tls.key_file`.
    pub key: &'a Path,
    /// `tls.client_ca_file`.
    pub client_ca: Option<&'a Path>,
    /// `tls.http`: the HTTP listener too.
    pub http: bool,
}

/// The rustls configurations of both listeners, from `[tls]`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The gRPC listener's (ALPN `h2`, client certificates per `client_ca_file`).
    pub grpc: Arc<ServerConfig>,
    /// The HTTP listener's, with `tls.http`.
    pub http: Option<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the files `[tls]` names and builds both configurations; an expired server
    /// certificate is refused here rather than by every agent.
    pub fn load(files: TlsFiles<'_>) -> Result<Self, TlsError> {
        let chain = read_certificates("tls.cert_file", files.cert)?;
        check_validity("tls.cert_file", files.cert, &chain[0], SystemTime::now())?;
        let key = read_private_key("tls.key_file", files.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = |client_ca: Option<&Path>| -> Result<_, TlsError> {
            let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::new("tls.cert_file", files.cert, e.to_string()))?;
            let builder = match client_ca {
                None => builder.with_no_client_auth(),
                Some(path) => {
                    let mut roots = RootCertStore::empty();
                    for ca in read_certificates("tls.client_ca_file", path)? {
                        roots.add(ca).map_err(|e| {
                            TlsError::new("tls.client_ca_file", path, format!("unusable CA: {e}"))
                        })?;
                    }
                    let verifier = WebPkiClientVerifier::builder_with_provider(
                        roots.into(),
                        Arc::clone(&provider),
                    )
                    .build()
                    .map_err(|e| TlsError::new("tls.client_ca_file", path, e.to_string()))?;
                    builder.with_client_cert_verifier(verifier)
                }
            };
            builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| {
                    TlsError::new(
                        "tls.key_file",
                        files.key,
                        format!("does not go with tls.cert_file: {e}"),
                    )
                })
        };
        let mut grpc = builder(files.client_ca)?;
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        let http = if files.http {
            let mut http = builder(None)?;
            http.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(Arc::new(http))
        } else {
            None
        };
        Ok(Self {
            grpc: Arc::new(grpc),
            http,
        })
    }
}

/// Runs handshakes with the configuration in force; clones share it, and
/// [`replace`](Acceptor::replace) (a reload) changes it for new connections.
#[derive(Debug, Clone)]
pub struct Acceptor {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    /// `gRPC` or `HTTP`, for the logs.
    listener: &'static str,
}

impl Acceptor {
    /// An acceptor for the `listener` (named in logs) with `config`.
    pub fn new(listener: &'static str, config: Arc<ServerConfig>) -> Self {
        Self {
            config: Arc::new(RwLock::new(config)),
            listener,
        }
    }

    /// Uses `config` for every handshake from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The TLS handshake of one accepted stream, within the handshake deadline.
    pub async fn accept<IO>(&self, io: IO) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner));
        let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => Ok(tls),
            Ok(Err(error)) => Err(HandshakeError::Failed(error)),
            Err(_) => Err(HandshakeError::TimedOut),
        }
    }

    /// [`accept`](Acceptor::accept), logging a failure from `peer`: a misconfiguration
    /// (certificate, plaintext client) as a warning, a peer that hung up at debug level.
    pub async fn handshake<IO>(&self, io: IO, peer: SocketAddr) -> Option<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.accept(io).await {
            Ok(tls) => Some(tls),
            Err(error) if error.is_misconfiguration() => {
                warn!(listener = self.listener, %peer, %error, "TLS handshake refused");
                None
            }
            Err(error) => {
                debug!(listener = self.listener, %peer, %error, "TLS handshake failed");
                None
            }
        }
    }
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer did not finish within the deadline.
    #[error("no TLS handshake within {}s", HANDSHAKE_TIMEOUT.as_secs())]
    TimedOut,
    /// The handshake failed.
    #[error("{}", explain(.0))]
    Failed(#[source] io::Error),
}

impl HandshakeError {
    /// Whether the admin should hear of it: a certificate problem or a plaintext client,
    /// as opposed to a peer that hung up or timed out.
    fn is_misconfiguration(&self) -> bool {
        let HandshakeError::Failed(error) = self else {
            return false;
        };
        matches!(
            rustls_error(error),
            Some(
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::InvalidMessage(_)
            )
        )
    }
}

fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A failed server-side handshake in the admin's words.
fn explain(error: &io::Error) -> String {
    use rustls::Error as E;
    let Some(tls) = rustls_error(error) else {
        return format!("TLS handshake failed: {error}");
    };
    match tls {
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the client certificate has expired: renew it (rally-collector pki client)".into()
        }
        E::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the client certificate is not valid yet: check the clocks".into(),
        // A CA of the same name but another key fails its signature, not the lookup.
        E::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature) => {
            "the client certificate is not signed by a CA of tls.client_ca_file (unknown CA)".into()
        }
        E::InvalidCertificate(other) => format!("the client certificate was refused: {other:?}"),
        E::NoCertificatesPresented => {
            "the client presented no certificate, and tls.client_ca_file requires one (set the agent's tls.cert_file and tls.key_file)".into()
        }
        E::AlertReceived(alert @ (AlertDescription::UnknownCA
        | AlertDescription::BadCertificate
        | AlertDescription::CertificateExpired
        | AlertDescription::CertificateUnknown
        // What rustls sends for a certificate signed by a same-named CA.
        | AlertDescription::DecryptError)) => format!(
            "the client refused this collector's certificate ({alert:?}): check that its tls.ca_file holds the CA of tls.cert_file, that the certificate names the address the client dials, and that it has not expired"
        ),
        E::InvalidMessage(_) => {
            "the client does not speak TLS (an agent with an http:// collector address? use https://)".into()
        }
        other => format!("TLS handshake failed: {other}"),
    }
}

/// Finished TLS streams from a stream of accepted connections (the gRPC listener's);
/// each handshake runs on its own task. Dropping it stops the accepting task.
pub struct Handshakes<IO> {
    ready: mpsc::Receiver<TlsStream<IO>>,
    driver: tokio::task::JoinHandle<()>,
}

impl<IO> std::fmt::Debug for Handshakes<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshakes").finish_non_exhaustive()
    }
}

impl<IO> Handshakes<IO>
where
    IO: Connected<ConnectInfo = TcpConnectInfo> + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Starts taking connections from `accepted` and completing their handshakes with
    /// `acceptor`.
    pub fn spawn<S>(accepted: S, acceptor: Acceptor) -> Self
    where
        S: Stream<Item = io::Result<IO>> + Send + 'static,
    {
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        let driver = tokio::spawn(drive(accepted, acceptor, tx));
        Self { ready, driver }
    }
}

impl<IO> Drop for Handshakes<IO> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn drive<S, IO>(accepted: S, acceptor: Acceptor, ready: mpsc::Sender<TlsStream<IO>>)
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: Connected<ConnectInfo = TcpConnectInfo> + AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let mut accepted = std::pin::pin!(accepted);
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let io = match accepted.next().await {
            None => return,
            Some(Ok(io)) => io,
            Some(Err(error)) => {
                warn!(listener = acceptor.listener, %error, "accepting a connection failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let Some(peer) = io.connect_info().remote_addr() else {
            continue;
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            let _slot = slot;
            if let Some(tls) = acceptor.handshake(io, peer).await {
                let _ = ready.send(tls).await;
            }
        });
    }
}

impl<IO> Stream for Handshakes<IO> {
    type Item = io::Result<TlsStream<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.ready.poll_recv(cx).map(|next| next.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_cert(sans: Vec<rcgen::SanType>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn the_vm_comes_from_the_one_rally_uri_san() {
        let cert = client_cert(vec![
            rcgen::SanType::DnsName("web-1.example.org".try_into().unwrap()),
            uri("rally://vm/web-1"),
        ]);
        assert_eq!(vm_of_certificate(&cert).unwrap(), "web-1");
        let none = client_cert(vec![rcgen::SanType::DnsName("web-1".try_into().unwrap())]);
        assert!(
            vm_of_certificate(&none)
                .unwrap_err()
                .contains("no `rally://vm/<id>`")
        );
        let two = client_cert(vec![uri("rally://vm/a"), uri("rally://vm/b")]);
        assert!(vm_of_certificate(&two).unwrap_err().contains("several"));
        let bad = client_cert(vec![uri("rally://vm/a%20b")]);
        assert!(vm_of_certificate(&bad).unwrap_err().contains("VM id"));
    }

    #[test]
    fn validity_is_checked_against_the_clock() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap().der().clone();
        let path = Path::new("/etc/rally/pki/server.pem");
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        // 2020-06-01, 2022-01-01, 2019-01-01.
        check_validity("tls.cert_file", path, &cert, at(1_590_969_600)).unwrap();
        let err = check_validity("tls.cert_file", path, &cert, at(1_640_995_200))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "tls.cert_file = \"/etc/rally/pki/server.pem\": the certificate expired on"
            ),
            "{err}"
        );
        let err = check_validity("tls.cert_file", path, &cert, at(1_546_300_800)).unwrap_err();
        assert!(err.problem.contains("not valid before"), "{err}");
    }

    #[test]
    fn handshake_errors_say_what_to_fix() {
        let wrap = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        let said = |e| HandshakeError::Failed(wrap(e)).to_string();
        assert!(
            said(rustls::Error::InvalidCertificate(CertificateError::Expired)).contains("expired")
        );
        assert!(
            said(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
            .contains("unknown CA")
        );
        assert!(
            said(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature
            ))
            .contains("unknown CA"),
            "a CA of the same name, another key"
        );
        assert!(said(rustls::Error::NoCertificatesPresented).contains("no certificate"));
        assert!(
            said(rustls::Error::AlertReceived(AlertDescription::UnknownCA))
                .contains("refused this collector's certificate")
        );
        assert!(
            HandshakeError::Failed(wrap(rustls::Error::NoCertificatesPresented))
                .is_misconfiguration()
        );
        assert!(!HandshakeError::TimedOut.is_misconfiguration());
    }
}
