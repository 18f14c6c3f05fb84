//! TLS for every Cobble link (rustls, ring): the coordinator's certificate
//! (the operator's, or a self-signed one made on first start), reloadable
//! without dropping connections; a handshaking acceptor that no slow or
//! junk client can stall; and a client connector that verifies the server
//! either against the system's roots or against a pinned SHA-256
//! fingerprint, which is how a self-signed project and every worker-to-
//! worker link are authenticated.
//!
//! Why a connector of our own rather than tonic's `ClientTlsConfig`: pinning
//! needs a custom certificate verifier, which tonic's config cannot take,
//! and a certificate that changed must be refused with a message that says
//! what changed and how to re-pin.

mod accept;
mod connect;

pub use accept::{HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES, ServerStream, accept};
pub use connect::{
    ConnectError, Seen, Trust, chain, client_config, connect_channel, connect_channel_lazy,
    web_client_config,
};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0:?} is not a TLS fingerprint: expected 64 hex digits (SHA-256 of the certificate)")]
    BadFingerprint(String),
    #[error("TLS: {0}")]
    Tls(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The crypto Cobble uses everywhere, so no process-wide default is needed.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER bytes: what operators print and
/// volunteers pin, in the form `openssl x509 -fingerprint -sha256` shows
/// (less the colons).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(certificate: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(certificate).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = Error;

    /// Accepts hex with or without colons, either case.
    fn from_str(text: &str) -> Result<Self> {
        let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&digits).map_err(|_| Error::BadFingerprint(text.to_string()))?;
        bytes
            .try_into()
            .map(Fingerprint)
            .map_err(|_| Error::BadFingerprint(text.to_string()))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

/// A certificate chain and its private key, as DER.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// The fingerprint of the end-entity certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.chain.first().map_or(&[][..], |c| c.as_ref()))
    }

    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1
    /// or SEC1), as operators get them from an ACME client.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Identity> {
        let fail = |path: &Path, message: String| Error::File {
            path: path.to_path_buf(),
            message,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| fail(cert, e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| fail(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(fail(cert, "holds no PEM certificate".into()));
        }
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| fail(key, e.to_string()))?;
        let identity = Identity {
            chain,
            key: key_der,
        };
        identity.certified_key()?;
        Ok(identity)
    }

    /// A new self-signed certificate valid for `names` (DNS names or IP
    /// addresses), with a fresh P-256 key.
    pub fn self_signed(names: &[String]) -> Result<Identity> {
        let (cert, key) = self_signed_pem(names)?;
        Ok(Identity {
            chain: vec![
                CertificateDer::from_pem_slice(cert.as_bytes())
                    .map_err(|e| Error::Tls(format!("the generated certificate: {e}")))?,
            ],
            key: PrivateKeyDer::from_pem_slice(key.as_bytes())
                .map_err(|e| Error::Tls(format!("the generated key: {e}")))?,
        })
    }

    /// Reads `cert` and `key` (PEM), creating a self-signed pair there
    /// first if neither exists: the coordinator's and every worker's
    /// default, so a restart keeps the fingerprint others pinned.
    pub fn load_or_create(cert: &Path, key: &Path, names: &[String]) -> Result<Identity> {
        if !cert.exists() && !key.exists() {
            let (cert_pem, key_pem) = self_signed_pem(names)?;
            write_new(key, key_pem.as_bytes())?;
            write_new(cert, cert_pem.as_bytes())?;
            tracing::info!(cert = %cert.display(), "created a self-signed TLS certificate");
        }
        Identity::from_pem_files(cert, key)
    }

    fn certified_key(&self) -> Result<CertifiedKey> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
            .map_err(|e| Error::Tls(format!("certificate and key do not fit together: {e}")))
    }
}

/// A self-signed certificate and its key, as PEM.
fn self_signed_pem(names: &[String]) -> Result<(String, String)> {
    let made = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| Error::Tls(format!("generating a certificate: {e}")))?;
    Ok((made.cert.pem(), made.signing_key.serialize_pem()))
}

/// Creates a file readable by its owner only; never overwrites one.
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| Error::File {
        path: path.to_path_buf(),
        message: format!("cannot create: {e}"),
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

/// The server's certificate, swappable while serving: a reload (SIGHUP)
/// affects new handshakes only, so no connection is dropped.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<(Arc<CertifiedKey>, Fingerprint)>,
}

impl ServerCert {
    pub fn new(identity: &Identity) -> Result<Arc<ServerCert>> {
        Ok(Arc::new(ServerCert {
            current: RwLock::new((Arc::new(identity.certified_key()?), identity.fingerprint())),
        }))
    }

    /// Serves `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<()> {
        let key = Arc::new(identity.certified_key()?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (key, identity.fingerprint());
        Ok(())
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.current.read().unwrap_or_else(|p| p.into_inner()).1
    }

    /// A rustls server configuration serving this certificate over HTTP/2,
    /// with or without asking clients for a certificate of their own.
    pub fn config(
        self: &Arc<Self>,
        client_certificates: bool,
    ) -> Result<Arc<rustls::ServerConfig>> {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let builder = if client_certificates {
            builder.with_client_cert_verifier(Arc::new(connect::AnyClientCertificate::new()))
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// The fingerprint of the certificate a peer presented on a connection a
/// tonic server accepted over TLS, if it presented one.
pub fn client_fingerprint<T>(request: &tonic::Request<T>) -> Option<Fingerprint> {
    let certs = request.peer_certs()?;
    certs.first().map(|c| Fingerprint::of(c.as_ref()))
}

#[cfg(test)]
mod tests;
