//! TLS for the TCP transport (rustls with the ring provider).
//!
//! TLS encrypts the link and, with mutual TLS, makes both ends prove a
//! certificate issued by a CA the other trusts. It is independent of the
//! shared-secret handshake in [`crate::auth`], which runs inside the TLS
//! link as well.
//!
//! The crypto provider is passed explicitly to every config builder: nothing
//! here relies on (or installs) a process-wide default provider.
//!
//! # Files
//! All files are PEM. For a pair of gateways, one private CA signs a
//! certificate for each node:
//! ```text
//! # CA (keep ca.key offline)
//! openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
//!     -keyout ca.key -out ca.pem -days 3650 -subj "/CN=persist pair CA"
//! # One node (repeat per node); the SAN must match the name the peer dials
//! openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
//!     -keyout node-a.key -out node-a.csr -subj "/CN=node-a"
//! openssl x509 -req -in node-a.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
//!     -out node-a.pem -days 825 \
//!     -extfile <(printf "subjectAltName=DNS:node-a,IP:192.168.1.10")
//! ```
//! The acceptor (master) uses `node-a.pem` + `node-a.key` and, to require
//! client certificates, `ca.pem` as the client CA
//! ([`TlsServer::from_pem_files`]). The dialer (backup) trusts `ca.pem` and
//! presents its own certificate for mutual TLS
//! ([`TlsClient::from_pem_files`]). The certificate file may hold a chain
//! (leaf first). Keys may be PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
//!
//! The same can be produced in Rust with `rcgen` (the tests do:
//! `persist-sync/tests/common/mod.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use thiserror::Error;

/// Why a TLS configuration could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file is not valid PEM.
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("{} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{} holds no PEM private key (expected PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A CA bundle holds a certificate that cannot be used as a trust anchor.
    #[error("{}: certificate {index} is not a usable CA certificate: {detail}", path.display())]
    BadCaCertificate {
        /// The file.
        path: PathBuf,
        /// Index of the certificate in the file (0 = first).
        index: usize,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the certificate and key (for instance, the key does not
    /// match the certificate).
    #[error("certificate {} with key {}: {detail}", cert.display(), key.display())]
    CertKey {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        detail: String,
    },
    /// The name to verify the server certificate against is invalid.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    /// Another rustls configuration error.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file (a chain or a CA bundle).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_owned(),
        })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (index, cert) in load_certs(path)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadCaCertificate {
            path: path.to_owned(),
            index,
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Server-side (acceptor) TLS settings.
#[derive(Clone)]
pub struct TlsServer {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Builds the server config from PEM files: the certificate chain and
    /// private key this server presents and, for mutual TLS, the CA bundle
    /// that client certificates must chain to. With `client_ca`, clients
    /// without a valid certificate are refused during the TLS handshake.
    pub fn from_pem_files(
        cert_chain: &Path,
        private_key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<TlsServer, TlsError> {
        let certs = load_certs(cert_chain)?;
        let key = load_key(private_key)?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider,
                )
                .build()
                .map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::CertKey {
                cert: cert_chain.to_owned(),
                key: private_key.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(TlsServer::from_config(Arc::new(config)))
    }

    /// Uses a rustls config built by the caller.
    pub fn from_config(config: Arc<ServerConfig>) -> TlsServer {
        TlsServer {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

/// Client-side (dialer) TLS settings.
#[derive(Clone)]
pub struct TlsClient {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the client config from PEM files: the CA bundle the server
    /// certificate must chain to and, for mutual TLS, the certificate chain
    /// and private key this client presents.
    ///
    /// The server certificate is checked against the host part of the
    /// address dialed, unless [`TlsClient::with_server_name`] sets another
    /// name.
    pub fn from_pem_files(
        ca: &Path,
        identity: Option<(&Path, &Path)>,
    ) -> Result<TlsClient, TlsError> {
        let roots = load_roots(ca)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert_chain, private_key)) => builder
                .with_client_auth_cert(load_certs(cert_chain)?, load_key(private_key)?)
                .map_err(|e| TlsError::CertKey {
                    cert: cert_chain.to_owned(),
                    key: private_key.to_owned(),
                    detail: e.to_string(),
                })?,
            None => builder.with_no_client_auth(),
        };
        Ok(TlsClient::from_config(Arc::new(config)))
    }

    /// Uses a rustls config built by the caller.
    pub fn from_config(config: Arc<ClientConfig>) -> TlsClient {
        TlsClient {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name: None,
        }
    }

    /// Verifies the server certificate against `name` (a DNS name or an IP
    /// address) instead of the host part of the dialed address.
    pub fn with_server_name(mut self, name: &str) -> Result<TlsClient, TlsError> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }
}

pub(crate) fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}
