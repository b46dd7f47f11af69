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
    /// The authenticated peer announces this node's own id: both nodes of
    /// the pair are configured with the same id.
    #[error("the peer uses this node's own id {0:?}: give each node of the pair its own id")]
    SameNodeId(String),
    /// The link leads back to this very node (its peer address points at
    /// itself).
    #[error("the link leads back to this node itself: its peer address points at this node")]
    SelfConnection,
}

/// Authenticates the link whose halves are `sink` and `source`, as `role`.
/// On success the link is ready for the sync protocol. On error the sink
/// has been closed (the acceptor has sent nothing beyond its hello or a
/// refusal) and the link must be dropped.
///
/// Sets the source's maximum frame to the handshake limit; raise it after
/// success. This drives a [`Handshake`] over the link; the sync sessions run
/// the same machine inside their own state machines.
pub async fn authenticate<S: FrameSink, R: FrameSource>(
    sink: &mut S,
    source: &mut R,
    role: LinkRole,
    cfg: &AuthConfig,
    timeout: Duration,
) -> Result<Peer, AuthError> {
    source.set_max_frame(Limits::handshake().max_frame);
    let exchange = async {
        let mut hs = Handshake::new(role, cfg, fresh_nonce()?);
        let mut out = Vec::new();
        hs.start(&mut out);
        loop {
            for msg in out.drain(..) {
                sink.send(codec::encode(&msg)).await?;
            }
            let received = match source.recv().await {
                Ok(Some(frame)) => Some(codec::decode(&frame, &Limits::handshake())?),
                Ok(None) => None,
                // A reset right after our proof is the peer rejecting it.
                Err(e) if is_close(&e) && hs.awaiting_proof_as_dialer() => None,
                Err(e) => return Err(AuthError::Io(e)),
            };
            match hs.on_message(received, &mut out, &|_| false) {
                HandshakeStep::Continue => {}
                HandshakeStep::Done(peer) => {
                    for msg in out.drain(..) {
                        sink.send(codec::encode(&msg)).await?;
                    }
                    return Ok(peer);
                }
                HandshakeStep::Failed(e) => {
                    // The only things an unauthenticated peer may learn: a
                    // refusal is best effort, the peer may be gone already.
                    for msg in out.drain(..) {
                        if sink.send(codec::encode(&msg)).await.is_err() {
                            break;
                        }
                    }
                    return Err(e);
                }
            }
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

/// A fresh random nonce from the operating system.
pub fn fresh_nonce() -> Result<[u8; 32], AuthError> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| {
        AuthError::Io(io::Error::other(format!(
            "no randomness for the nonce: {e}"
        )))
    })?;
    Ok(nonce)
}

/// A hello's fields.
#[derive(Debug, Clone)]
struct Hello {
    protocol: u16,
    cluster: String,
    node_id: String,
    role: LinkRole,
    nonce: [u8; 32],
}

impl Hello {
    fn ours(cfg: &AuthConfig, role: LinkRole, nonce: [u8; 32]) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            cluster: cfg.cluster.clone(),
            node_id: cfg.node_id.clone(),
            role,
            nonce,
        }
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

/// An error that means the peer went away (TCP RST, TLS without
/// close_notify) rather than a local fault.
pub(crate) fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

fn unexpected(expected: &str, got: &Message) -> AuthError {
    AuthError::Protocol(format!("expected {expected}, got {}", got.kind()))
}

/// Checks the peer's hello against ours.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for the peer's hello.
    Hello,
    /// Waiting for the peer's proof.
    Proof,
    /// Authenticated or failed: no more input.
    Over,
}

/// What the handshake did with an input.
#[derive(Debug)]
pub enum HandshakeStep {
    /// Send what was queued and wait for the next message.
    Continue,
    /// The peer is authenticated (send what was queued: the acceptor's proof).
    Done(Peer),
    /// The handshake failed: send what was queued (at most a refusal), then
    /// close the link.
    Failed(AuthError),
}

/// The authentication exchange as a state machine without I/O: it is given
/// the messages that arrive and queues the ones to send (see the module
/// docs for the flow). Nonces come from the caller, so a simulation can
/// replay a handshake from a seed.
///
/// After both proofs check out, a peer announcing this node's own id is
/// refused ([`AuthError::SameNodeId`]), and so is a link to this very node
/// ([`AuthError::SelfConnection`]: the other end's nonce is one this node
/// sent itself, which the caller recognizes).
pub struct Handshake {
    role: LinkRole,
    cluster: String,
    node_id: String,
    secret: Secret,
    ours: Hello,
    theirs: Option<Hello>,
    stage: Stage,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("role", &self.role)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl Handshake {
    /// A handshake as `role`, with this side's fresh `nonce`.
    pub fn new(role: LinkRole, cfg: &AuthConfig, nonce: [u8; 32]) -> Handshake {
        Handshake {
            role,
            cluster: cfg.cluster.clone(),
            node_id: cfg.node_id.clone(),
            secret: cfg.secret.clone(),
            ours: Hello::ours(cfg, role, nonce),
            theirs: None,
            stage: Stage::Hello,
        }
    }

    /// This side's nonce.
    pub fn nonce(&self) -> [u8; 32] {
        self.ours.nonce
    }

    /// Queues what this side sends before hearing anything (the dialer's hello).
    pub fn start(&mut self, out: &mut Vec<Message>) {
        if self.role == LinkRole::Dialer && self.stage == Stage::Hello {
            out.push(self.ours.message());
        }
    }

    /// Whether a close now means the peer rejected our proof.
    pub fn awaiting_proof_as_dialer(&self) -> bool {
        self.role == LinkRole::Dialer && self.stage == Stage::Proof
    }

    /// Feeds the next message (`None`: the peer closed the link). `is_own`
    /// tells whether a nonce is one this node sent itself.
    pub fn on_message(
        &mut self,
        msg: Option<Message>,
        out: &mut Vec<Message>,
        is_own: &dyn Fn(&[u8; 32]) -> bool,
    ) -> HandshakeStep {
        let r = self.advance(msg, out, is_own);
        match r {
            Ok(None) => HandshakeStep::Continue,
            Ok(Some(peer)) => {
                self.stage = Stage::Over;
                HandshakeStep::Done(peer)
            }
            Err(e) => {
                self.stage = Stage::Over;
                HandshakeStep::Failed(e)
            }
        }
    }

    fn advance(
        &mut self,
        msg: Option<Message>,
        out: &mut Vec<Message>,
        is_own: &dyn Fn(&[u8; 32]) -> bool,
    ) -> Result<Option<Peer>, AuthError> {
        let closed = |during: &str| {
            AuthError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("peer closed the link {during}"),
            ))
        };
        match (self.stage, self.role) {
            (Stage::Over, _) => Err(AuthError::Protocol(
                "message after the handshake ended".into(),
            )),
            (Stage::Hello, role) => {
                let expected = match role {
                    LinkRole::Dialer => LinkRole::Acceptor,
                    LinkRole::Acceptor => LinkRole::Dialer,
                };
                let theirs = match msg {
                    None => return Err(closed("before its hello")),
                    Some(Message::Refused { reason }) if role == LinkRole::Dialer => {
                        return Err(AuthError::Refused(reason))
                    }
                    Some(msg) => match check_hello(msg, &self.ours, expected) {
                        Ok(h) => h,
                        Err(AuthError::Refused(reason)) if role == LinkRole::Acceptor => {
                            out.push(Message::Refused {
                                reason: reason.clone(),
                            });
                            return Err(AuthError::Refused(reason));
                        }
                        Err(e) => return Err(e),
                    },
                };
                match role {
                    LinkRole::Dialer => {
                        let t = transcript(&self.ours, &theirs);
                        out.push(Message::Proof {
                            mac: prove(&self.secret, DIALER_LABEL, &t),
                        });
                    }
                    LinkRole::Acceptor => out.push(self.ours.message()),
                }
                self.theirs = Some(theirs);
                self.stage = Stage::Proof;
                Ok(None)
            }
            (Stage::Proof, role) => {
                let theirs = self.theirs.clone().expect("hello received before a proof");
                let mac = match msg {
                    None if role == LinkRole::Dialer => return Err(AuthError::PeerRejectedUs),
                    None => return Err(closed("before its proof")),
                    Some(Message::Proof { mac }) => mac,
                    Some(msg) => return Err(unexpected("Proof", &msg)),
                };
                let (t, their_label) = match role {
                    LinkRole::Dialer => (transcript(&self.ours, &theirs), ACCEPTOR_LABEL),
                    LinkRole::Acceptor => (transcript(&theirs, &self.ours), DIALER_LABEL),
                };
                if !verify(&self.secret, their_label, &t, &mac) {
                    return Err(AuthError::BadProof);
                }
                if role == LinkRole::Acceptor {
                    // The dialer checks the same two things on its side.
                    out.push(Message::Proof {
                        mac: prove(&self.secret, ACCEPTOR_LABEL, &t),
                    });
                }
                if is_own(&theirs.nonce) {
                    return Err(AuthError::SelfConnection);
                }
                if theirs.node_id == self.node_id {
                    return Err(AuthError::SameNodeId(theirs.node_id));
                }
                Ok(Some(Peer {
                    node_id: theirs.node_id,
                    cluster: self.cluster.clone(),
                }))
            }
        }
    }
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
