//! Mutual challenge-response authentication of a link, before any data
//! flows. The shared secret never crosses the link.
//!
//! # Flow
//! ```text
//! dialer                                   acceptor
//!   Hello{protocol, cluster, node_id,  --->
//!         role: Dialer, nonce_d}
//!                                      <---  Hello{..., role: Acceptor, nonce_a}
//!                                            or Refused{ProtocolVersion | ClusterName}, close
//!   Proof{HMAC(secret, "persist-auth-v1/dialer"   || T)}  --->
//!                                            wrong: log, close without a word
//!                                      <---  Proof{HMAC(secret, "persist-auth-v1/acceptor" || T)}
//!   wrong: close
//! ```
//! `T`, the transcript, is the dialer's hello then the acceptor's hello, each
//! as `protocol (u16 BE) | cluster | node_id | role (u8) | nonce (32 bytes)`
//! with strings prefixed by their length (u32 BE), so no two different
//! exchanges share a transcript. Each MAC covers both fresh nonces, so a
//! proof cannot be replayed on another connection, and the role label keeps
//! one side's proof from being reflected as the other's. A peer that echoes
//! our own nonce is refused.
//!
//! Before proving the secret, a peer learns only whether its protocol
//! version and cluster name match. Every handshake frame is decoded with
//! [`Limits::handshake`], and the whole exchange is bounded by a timeout.
//!
//! After success the link's source still accepts handshake-sized frames
//! only; the session raises the limit with
//! [`FrameSource::set_max_frame`]`(`[`Limits::default`]`().max_frame)`.

use std::fmt;
use std::io;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::codec::{self, CodecError, Limits};
use crate::protocol::{LinkRole, Message, RefuseReason, PROTOCOL_VERSION};
use crate::transport::{FrameSink, FrameSource};

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// How long closing a failed link may take.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

const DIALER_LABEL: &[u8] = b"persist-auth-v1/dialer";
const ACCEPTOR_LABEL: &[u8] = b"persist-auth-v1/acceptor";

/// The shared secret of a pair. Its `Debug` output never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps a secret; refuses one shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, ConfigError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(ConfigError::SecretTooShort {
                len: bytes.len(),
                min: MIN_SECRET_LEN,
            });
        }
        Ok(Secret(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: without `unsafe` or a zeroize crate the compiler may
        // elide this, and copies may exist elsewhere.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

/// Why an [`AuthConfig`] or [`Secret`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The secret is missing or too short to resist guessing.
    #[error("the shared secret is {len} bytes long; at least {min} bytes are required")]
    SecretTooShort {
        /// Its length.
        len: usize,
        /// [`MIN_SECRET_LEN`].
        min: usize,
    },
    /// A name is empty or does not fit in a handshake frame.
    #[error("{what} must be 1 to {max} bytes long (it is {len})")]
    BadName {
        /// "cluster name" or "node id".
        what: &'static str,
        /// Its length.
        len: usize,
        /// The longest accepted.
        max: usize,
    },
}

/// What a node needs to authenticate links.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The cluster both nodes of the pair belong to.
    pub cluster: String,
    /// This node's id.
    pub node_id: String,
    /// The pair's shared secret.
    pub secret: Secret,
}

impl AuthConfig {
    /// Checks that the names fit in a handshake frame.
    pub fn new(
        cluster: impl Into<String>,
        node_id: impl Into<String>,
        secret: Secret,
    ) -> Result<AuthConfig, ConfigError> {
        let cfg = AuthConfig {
            cluster: cluster.into(),
            node_id: node_id.into(),
            secret,
        };
        let max = Limits::handshake().max_string;
        for (what, s) in [("cluster name", &cfg.cluster), ("node id", &cfg.node_id)] {
            if s.is_empty() || s.len() > max {
                return Err(ConfigError::BadName {
                    what,
                    len: s.len(),
                    max,
                });
            }
        }
        Ok(cfg)
    }
}

/// The authenticated peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its node id (as it announced it; proven to know the secret).
    pub node_id: String,
    /// Its cluster (equal to ours).
    pub cluster: String,
}

/// Why authentication failed. The link must be dropped after any of them.
#[derive(Debug, Error)]
pub enum AuthError {
    /// The handshake ended in a refusal: sent by the acceptor (and returned
    /// on both sides), or found by the dialer in the acceptor's hello.
    #[error("connection refused: {0:?}")]
    Refused(RefuseReason),
    /// The peer's proof was wrong: it does not know the secret. We closed.
    #[error("the peer failed to prove it knows the shared secret")]
    BadProof,
    /// The peer closed the link after our proof: it rejected our secret.
    #[error("the peer closed the link after our proof (wrong shared secret?)")]
    PeerRejectedUs,
    /// The handshake did not finish in time.
    #[error("authentication timed out after {0:?}")]
    Timeout(Duration),
    /// The link failed.
    #[error("link error during authentication: {0}")]
    Io(#[from] io::Error),
    /// A frame could not be decoded.
    #[error("bad handshake frame: {0}")]
    Codec(#[from] CodecError),
    /// The peer sent something the handshake does not allow.
    #[error("handshake protocol violation: {0}")]
    Protocol(String),
}

/// Authenticates the link whose halves are `sink` and `source`, as `role`.
/// On success the link is ready for the sync protocol. On error the sink
/// has been closed (the acceptor has sent nothing beyond its hello or a
/// refusal) and the link must be dropped.
///
/// Sets the source's maximum frame to the handshake limit; raise it after
/// success.
pub async fn authenticate<S: FrameSink, R: FrameSource>(
    sink: &mut S,
    source: &mut R,
    role: LinkRole,
    cfg: &AuthConfig,
    timeout: Duration,
) -> Result<Peer, AuthError> {
    source.set_max_frame(Limits::handshake().max_frame);
    let exchange = async {
        match role {
            LinkRole::Dialer => dial_side(sink, source, cfg).await,
            LinkRole::Acceptor => accept_side(sink, source, cfg).await,
        }
    };
    let result = tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(AuthError::Timeout(timeout)));
    if let Err(e) = &result {
        // Close our direction so the peer is not left waiting for a frame
        // that will not come (it sees a clean end, or a reset). Nothing is
        // sent: for TLS, only the close_notify alert.
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.close()).await;
        match e {
            AuthError::BadProof => tracing::warn!(
                peer = %source.peer(),
                "peer failed authentication (wrong shared secret?); closing"
            ),
            e => tracing::info!(peer = %source.peer(), error = %e, "authentication failed"),
        }
    }
    result
}

/// A hello's fields.
struct Hello {
    protocol: u16,
    cluster: String,
    node_id: String,
    role: LinkRole,
    nonce: [u8; 32],
}

impl Hello {
    fn ours(cfg: &AuthConfig, role: LinkRole) -> Result<Hello, AuthError> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| {
            AuthError::Io(io::Error::other(format!(
                "no randomness for the nonce: {e}"
            )))
        })?;
        Ok(Hello {
            protocol: PROTOCOL_VERSION,
            cluster: cfg.cluster.clone(),
            node_id: cfg.node_id.clone(),
            role,
            nonce,
        })
    }

    fn message(&self) -> Message {
        Message::Hello {
            protocol: self.protocol,
            cluster: self.cluster.clone(),
            node_id: self.node_id.clone(),
            role: self.role,
            nonce: self.nonce,
        }
    }

    fn transcribe(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.protocol.to_be_bytes());
        for s in [&self.cluster, &self.node_id] {
            // Names are bounded by the handshake limits, far below u32::MAX.
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        out.push(match self.role {
            LinkRole::Dialer => 0,
            LinkRole::Acceptor => 1,
        });
        out.extend_from_slice(&self.nonce);
    }
}

fn transcript(dialer: &Hello, acceptor: &Hello) -> Vec<u8> {
    let mut t = Vec::with_capacity(256);
    dialer.transcribe(&mut t);
    acceptor.transcribe(&mut t);
    t
}

fn mac(secret: &Secret, label: &[u8], transcript: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(&secret.0).expect("HMAC accepts any key length");
    mac.update(label);
    mac.update(transcript);
    mac
}

fn prove(secret: &Secret, label: &[u8], transcript: &[u8]) -> [u8; 32] {
    mac(secret, label, transcript)
        .finalize()
        .into_bytes()
        .into()
}

fn verify(secret: &Secret, label: &[u8], transcript: &[u8], proof: &[u8; 32]) -> bool {
    // Constant-time comparison.
    mac(secret, label, transcript).verify_slice(proof).is_ok()
}

async fn send<S: FrameSink>(sink: &mut S, msg: &Message) -> Result<(), AuthError> {
    Ok(sink.send(codec::encode(msg)).await?)
}

/// The next handshake message; `None` if the peer closed cleanly.
async fn recv<R: FrameSource>(source: &mut R) -> Result<Option<Message>, AuthError> {
    match source.recv().await? {
        None => Ok(None),
        Some(frame) => Ok(Some(codec::decode(&frame, &Limits::handshake())?)),
    }
}

fn closed(during: &str) -> AuthError {
    AuthError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("peer closed the link {during}"),
    ))
}

fn unexpected(expected: &str, got: &Message) -> AuthError {
    AuthError::Protocol(format!("expected {expected}, got {}", got.kind()))
}

/// Checks the peer's hello against ours; the refusal to send if it fails.
fn check_hello(msg: Message, ours: &Hello, expected_role: LinkRole) -> Result<Hello, AuthError> {
    let Message::Hello {
        protocol,
        cluster,
        node_id,
        role,
        nonce,
    } = msg
    else {
        return Err(unexpected("Hello", &msg));
    };
    if protocol != PROTOCOL_VERSION {
        return Err(AuthError::Refused(RefuseReason::ProtocolVersion {
            ours: PROTOCOL_VERSION,
            theirs: protocol,
        }));
    }
    if cluster != ours.cluster {
        return Err(AuthError::Refused(RefuseReason::ClusterName));
    }
    if role != expected_role {
        return Err(AuthError::Protocol(format!(
            "peer claims role {role:?}, expected {expected_role:?}"
        )));
    }
    if nonce == ours.nonce {
        return Err(AuthError::Protocol("peer echoed our nonce".into()));
    }
    Ok(Hello {
        protocol,
        cluster,
        node_id,
        role,
        nonce,
    })
}

async fn dial_side<S: FrameSink, R: FrameSource>(
    sink: &mut S,
    source: &mut R,
    cfg: &AuthConfig,
) -> Result<Peer, AuthError> {
    let ours = Hello::ours(cfg, LinkRole::Dialer)?;
    send(sink, &ours.message()).await?;
    let theirs = match recv(source).await? {
        None => return Err(closed("before its hello")),
        Some(Message::Refused { reason }) => return Err(AuthError::Refused(reason)),
        Some(msg) => check_hello(msg, &ours, LinkRole::Acceptor)?,
    };
    let t = transcript(&ours, &theirs);
    send(
        sink,
        &Message::Proof {
            mac: prove(&cfg.secret, DIALER_LABEL, &t),
        },
    )
    .await?;
    let mac = match source.recv().await {
        Ok(None) => return Err(AuthError::PeerRejectedUs),
        Err(e) if is_close(&e) => return Err(AuthError::PeerRejectedUs),
        Err(e) => return Err(e.into()),
        Ok(Some(frame)) => match codec::decode(&frame, &Limits::handshake())? {
            Message::Proof { mac } => mac,
            msg => return Err(unexpected("Proof", &msg)),
        },
    };
    if !verify(&cfg.secret, ACCEPTOR_LABEL, &t, &mac) {
        return Err(AuthError::BadProof);
    }
    Ok(Peer {
        node_id: theirs.node_id,
        cluster: theirs.cluster,
    })
}

/// An error that means the peer went away (TCP RST, TLS without
/// close_notify) rather than a local fault.
fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

async fn accept_side<S: FrameSink, R: FrameSource>(
    sink: &mut S,
    source: &mut R,
    cfg: &AuthConfig,
) -> Result<Peer, AuthError> {
    let ours = Hello::ours(cfg, LinkRole::Acceptor)?;
    let theirs = match recv(source).await? {
        None => return Err(closed("before its hello")),
        Some(msg) => match check_hello(msg, &ours, LinkRole::Dialer) {
            Ok(hello) => hello,
            Err(AuthError::Refused(reason)) => {
                // The only things an unauthenticated peer may learn. The
                // refusal is best effort: the peer may already be gone.
                let refusal = Message::Refused {
                    reason: reason.clone(),
                };
                if sink.send(codec::encode(&refusal)).await.is_ok() {
                    let _ = sink.close().await;
                }
                return Err(AuthError::Refused(reason));
            }
            Err(e) => return Err(e),
        },
    };
    send(sink, &ours.message()).await?;
    let t = transcript(&theirs, &ours);
    let mac = match recv(source).await? {
        None => return Err(closed("before its proof")),
        Some(Message::Proof { mac }) => mac,
        Some(msg) => return Err(unexpected("Proof", &msg)),
    };
    if !verify(&cfg.secret, DIALER_LABEL, &t, &mac) {
        return Err(AuthError::BadProof);
    }
    send(
        sink,
        &Message::Proof {
            mac: prove(&cfg.secret, ACCEPTOR_LABEL, &t),
        },
    )
    .await?;
    Ok(Peer {
        node_id: theirs.node_id,
        cluster: theirs.cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_and_bounded() {
        assert!(matches!(
            Secret::new(Vec::new()),
            Err(ConfigError::SecretTooShort { len: 0, min: 16 })
        ));
        assert!(Secret::new(vec![7; 15]).is_err());
        let s = Secret::new(b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let cfg = AuthConfig::new("c", "n", s).unwrap();
        assert!(!format!("{cfg:?}").contains("0123"));
    }

    #[test]
    fn transcript_is_unambiguous() {
        let h = |cluster: &str, node: &str| Hello {
            protocol: 1,
            cluster: cluster.into(),
            node_id: node.into(),
            role: LinkRole::Dialer,
            nonce: [0; 32],
        };
        let mut a = Vec::new();
        h("ab", "c").transcribe(&mut a);
        let mut b = Vec::new();
        h("a", "bc").transcribe(&mut b);
        assert_ne!(a, b);
    }
}
