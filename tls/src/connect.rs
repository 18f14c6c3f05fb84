//! The client side: which certificates a client accepts (the system's
//! roots, a pinned fingerprint, or the first one seen), and a connector
//! that speaks TLS for a tonic channel.

use crate::{Error, Fingerprint, Identity, Result, provider};
use hyper_util::rt::TokioIo;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_name};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use std::sync::{Arc, Mutex, OnceLock};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Which server certificates a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// One signed, for the server's name, by an authority the system trusts.
    System,
    /// Exactly this certificate, whoever signed it and whatever names it
    /// carries: a self-signed project, or a peer the tracker vouched for.
    Pinned(Fingerprint),
    /// Like `System`; but an untrusted certificate is accepted and recorded
    /// in [`Seen`], for the caller to pin (trust on first use, as SSH).
    FirstUse,
}

/// The certificate a server showed on the last handshake, and whether the
/// system's roots vouched for it.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<Mutex<Option<(Fingerprint, bool)>>>);

impl Seen {
    /// The fingerprint of the last certificate no authority vouched for:
    /// the one to pin.
    pub fn untrusted(&self) -> Option<Fingerprint> {
        self.get().filter(|(_, vouched)| !vouched).map(|(f, _)| f)
    }

    pub fn get(&self) -> Option<(Fingerprint, bool)> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the last handshake, before a new connection.
    pub fn clear(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn record(&self, fingerprint: Fingerprint, vouched: bool) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((fingerprint, vouched));
    }
}

/// The system's trusted roots, read once per process.
fn system_roots(provider: &Arc<CryptoProvider>) -> Option<Arc<WebPkiServerVerifier>> {
    static ROOTS: OnceLock<Option<Arc<rustls::RootCertStore>>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut store = rustls::RootCertStore::empty();
        store.add_parsable_certificates(found.certs);
        (!store.is_empty()).then(|| Arc::new(store))
    });
    WebPkiServerVerifier::builder_with_provider(roots.clone()?, provider.clone())
        .build()
        .ok()
}

/// The handshake signature checks both verifiers share: whoever the
/// certificate belongs to, the other side must prove it holds its key.
#[derive(Debug)]
struct Signatures(Arc<CryptoProvider>);

impl Signatures {
    fn tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The three signature methods both verifier traits require, handed to
/// the verifier's `signatures` field.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.signatures.tls12(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            self.signatures.tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.signatures.schemes()
        }
    };
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    roots: Option<Arc<WebPkiServerVerifier>>,
    seen: Seen,
    signatures: Signatures,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let shown = Fingerprint::of(end_entity.as_ref());
        if let Trust::Pinned(pinned) = self.trust {
            self.seen.record(shown, false);
            return if shown == pinned {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(format!(
                    "the TLS certificate changed: pinned sha256 {pinned}, the server showed {shown}. \
                     If its operator replaced the certificate (compare with the fingerprint they \
                     published), pin the new one with --tls-fingerprint {shown}"
                )))
            };
        }
        let vouched = match &self.roots {
            Some(roots) => roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map(|_| ())
                .and_then(|()| {
                    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                    verify_server_name(&parsed, server_name)
                }),
            None => Err(rustls::Error::General(
                "this system has no trusted root certificates".into(),
            )),
        };
        self.seen.record(shown, vouched.is_ok());
        match vouched {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(_) if self.trust == Trust::FirstUse => Ok(ServerCertVerified::assertion()),
            Err(error) => Err(rustls::Error::General(format!(
                "the server's TLS certificate (sha256 {shown}) is not trusted ({error}). If the \
                 project uses a self-signed certificate and {shown} is the fingerprint its \
                 operator published, pin it with --tls-fingerprint {shown}"
            ))),
        }
    }

    signature_checks!();
}

/// A peer's server asks every caller for a certificate and accepts any
/// that the caller proves it holds the key of: who may have what is
/// decided per request, by the capability bound to that certificate's
/// fingerprint, not by a certificate authority.
#[derive(Debug)]
pub(crate) struct AnyClientCertificate {
    signatures: Signatures,
}

impl AnyClientCertificate {
    pub(crate) fn new() -> Self {
        AnyClientCertificate {
            signatures: Signatures(provider()),
        }
    }
}

impl ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// A client configuration: HTTP/2, the given trust, and this side's own
/// certificate when it has one (workers show theirs to peers).
pub fn client_config(
    trust: Trust,
    seen: Seen,
    identity: Option<&Identity>,
) -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(Verifier {
        trust,
        roots: match trust {
            Trust::Pinned(_) => None,
            Trust::System | Trust::FirstUse => system_roots(&provider),
        },
        seen,
        signatures: Signatures(provider.clone()),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| Error::Tls(format!("the client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration for ordinary HTTPS services (an S3-compatible
/// object store): the system's roots, HTTP/1.1, no client certificate.
pub fn web_client_config() -> Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let roots = system_roots(&provider)
        .ok_or_else(|| Error::Tls("no usable root certificates on this system".into()))?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_webpki_verifier(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The connector a channel uses: TCP, then TLS to the endpoint's host.
/// The endpoint's URI must say `http://` (tonic's own TLS would otherwise
/// insist on doing the handshake itself).
fn connector(
    config: Arc<rustls::ClientConfig>,
    local: Option<std::net::IpAddr>,
) -> impl tower::Service<
    Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    let tls = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move {
            let invalid =
                |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_string());
            let host = uri
                .host()
                .ok_or_else(|| invalid("the address has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid("the address has no port"))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|e| invalid(&format!("{host:?} is not a host name: {e}")))?;
            let tcp = match local {
                None => TcpStream::connect((host.as_str(), port)).await?,
                Some(local) => {
                    let remote = tokio::net::lookup_host((host.as_str(), port))
                        .await?
                        .next()
                        .ok_or_else(|| invalid("the host name resolves to nothing"))?;
                    let socket = if remote.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(local, 0))?;
                    socket.connect(remote).await?
                }
            };
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        }
    })
}

/// The `http://` form tonic is given for a `host:port`.
fn plain_endpoint(address: &str) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| Error::Tls(format!("{address:?} is not host:port: {e}")))
}

/// Connects a channel over TLS to `address` (`host:port`), from the local
/// address `local` if given; `tune` sets the endpoint's timeouts.
pub async fn connect_channel(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    local: Option<std::net::IpAddr>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel, ConnectError> {
    let endpoint = tune(plain_endpoint(address).map_err(ConnectError::Address)?);
    endpoint
        .connect_with_connector(connector(config, local))
        .await
        .map_err(ConnectError::Transport)
}

/// Like [`connect_channel`], connecting on first use.
pub fn connect_channel_lazy(
    address: &str,
    config: Arc<rustls::ClientConfig>,
    tune: impl FnOnce(Endpoint) -> Endpoint,
) -> Result<Channel> {
    Ok(tune(plain_endpoint(address)?).connect_with_connector_lazy(connector(config, None)))
}

/// Why a connection failed, with the whole chain of causes in its message
/// (tonic's own says only "transport error").
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Address(Error),
    #[error("{}", chain(.0))]
    Transport(tonic::transport::Error),
}

/// An error and its causes, joined: the root cause is what a user needs.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
