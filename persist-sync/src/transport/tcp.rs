//! TCP links: each frame is a u32 big-endian length then the frame bytes
//! (tokio-util's [`LengthDelimitedCodec`]), optionally inside TLS.
//!
//! `TCP_NODELAY` is set on every socket: frames are small and latency
//! matters more than packet count (heartbeats, acks). The receiving half
//! checks the length prefix against its maximum before buffering the frame.
//!
//! Neither dialing nor reading has a timeout of its own: sessions bound them
//! with `tokio::time::timeout` and heartbeats. Accepting a TLS connection has
//! one ([`TcpAcceptor::with_handshake_timeout`]) so a silent client cannot
//! hold the accept loop, and at most 32 TLS handshakes run at once: one more
//! connection closes the oldest.
//!
//! The acceptor never spins: when `accept()` fails for want of descriptors,
//! buffers or memory it pauses ([`super::accept::AcceptBackoff`]) and logs
//! the episode once. The node core bounds the unauthenticated links it holds
//! (plain or TLS) and how long each may take to authenticate.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use super::accept::AcceptBackoff;
use super::tls::{parse_server_name, TlsClient, TlsServer};
use super::{frame_too_large, Acceptor, Dialer, FrameSink, FrameSource, Link, INITIAL_MAX_FRAME};

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Default bound on the TLS handshake of an accepted connection.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected TCP (or TLS over TCP) link.
pub struct TcpLink {
    read: BoxRead,
    write: BoxWrite,
    peer: SocketAddr,
    tls: bool,
}

impl std::fmt::Debug for TcpLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpLink")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl TcpLink {
    fn plain(stream: TcpStream, peer: SocketAddr) -> TcpLink {
        let (read, write) = stream.into_split();
        TcpLink {
            read: Box::new(read),
            write: Box::new(write),
            peer,
            tls: false,
        }
    }

    fn tls<S>(stream: S, peer: SocketAddr) -> TcpLink
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        TcpLink {
            read: Box::new(read),
            write: Box::new(write),
            peer,
            tls: true,
        }
    }

    /// The remote socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the link runs inside TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

impl Link for TcpLink {
    type Sink = TcpSink;
    type Source = TcpSource;

    fn split(self) -> (TcpSink, TcpSource) {
        // Outgoing frames are bounded by what the peer accepts, not here; the
        // codec's own default (8 MiB) would refuse large snapshot frames.
        let out = LengthDelimitedCodec::builder()
            .max_frame_length(u32::MAX as usize)
            .new_codec();
        let inc = LengthDelimitedCodec::builder()
            .max_frame_length(INITIAL_MAX_FRAME)
            .new_codec();
        (
            TcpSink {
                inner: FramedWrite::new(self.write, out),
            },
            TcpSource {
                inner: FramedRead::new(self.read, inc),
                peer: self.peer,
            },
        )
    }

    fn peer(&self) -> String {
        self.peer.to_string()
    }
}

/// The sending half of a [`TcpLink`].
pub struct TcpSink {
    inner: FramedWrite<BoxWrite, LengthDelimitedCodec>,
}

impl FrameSink for TcpSink {
    async fn send(&mut self, frame: Vec<u8>) -> io::Result<()> {
        self.inner.send(Bytes::from(frame)).await
    }

    async fn close(&mut self) -> io::Result<()> {
        SinkExt::<Bytes>::close(&mut self.inner).await
    }
}

/// The receiving half of a [`TcpLink`].
pub struct TcpSource {
    inner: FramedRead<BoxRead, LengthDelimitedCodec>,
    peer: SocketAddr,
}

impl FrameSource for TcpSource {
    async fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.inner.next().await {
            None => Ok(None),
            Some(Ok(frame)) => Ok(Some(frame.into())),
            Some(Err(e)) => {
                let oversized = e.get_ref().is_some_and(|inner| {
                    inner.is::<tokio_util::codec::LengthDelimitedCodecError>()
                });
                if oversized {
                    // The codec does not say how long the frame claimed to be.
                    let max = self.inner.decoder().max_frame_length();
                    Err(frame_too_large(max + 1, max))
                } else {
                    Err(e)
                }
            }
        }
    }

    fn set_max_frame(&mut self, max: usize) {
        self.inner.decoder_mut().set_max_frame_length(max);
    }

    fn peer(&self) -> String {
        self.peer.to_string()
    }
}

/// Dials one address, optionally with TLS.
#[derive(Debug, Clone)]
pub struct TcpDialer {
    addr: String,
    tls: Option<TlsClient>,
}

impl TcpDialer {
    /// A dialer for `addr` (`host:port`). With TLS, the server certificate is
    /// checked against `host` unless the [`TlsClient`] names another server.
    pub fn new(addr: impl Into<String>, tls: Option<TlsClient>) -> TcpDialer {
        TcpDialer {
            addr: addr.into(),
            tls,
        }
    }

    /// The address dialed.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

impl Dialer for TcpDialer {
    type Link = TcpLink;

    async fn dial(&self) -> io::Result<TcpLink> {
        let stream = TcpStream::connect(&self.addr).await?;
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        let Some(tls) = &self.tls else {
            return Ok(TcpLink::plain(stream, peer));
        };
        let name = match &tls.server_name {
            Some(name) => name.clone(),
            None => parse_server_name(host_of(&self.addr))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
        };
        let stream = tls.connector.connect(name, stream).await?;
        Ok(TcpLink::tls(stream, peer))
    }
}

/// Accepts TCP connections on a bound socket, optionally with TLS.
#[derive(Debug)]
pub struct TcpAcceptor {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<TlsServer>,
    handshake_timeout: Duration,
    /// TLS handshakes run in their own tasks and report here (with their
    /// number), so a slow or hostile client cannot hold up the accept loop.
    done_tx: tokio::sync::mpsc::UnboundedSender<(u64, io::Result<TcpLink>)>,
    done_rx: tokio::sync::mpsc::UnboundedReceiver<(u64, io::Result<TcpLink>)>,
    /// The TLS handshakes in progress, oldest first.
    handshakes: VecDeque<Handshaking>,
    next_handshake: u64,
    backoff: AcceptBackoff,
    /// No `accept()` before this: the last one failed for want of resources.
    paused_until: Option<tokio::time::Instant>,
}

/// A TLS handshake in its task.
#[derive(Debug)]
struct Handshaking {
    id: u64,
    peer: SocketAddr,
    task: tokio::task::AbortHandle,
}

/// TLS handshakes in progress at once, at most: one more connection closes
/// the oldest. (Refusing the newest instead would let this many silent
/// clients, reconnecting every handshake timeout, keep the real peer out.)
const MAX_HANDSHAKES: usize = 32;

impl TcpAcceptor {
    /// Binds `addr` (port 0 picks a free port; see
    /// [`TcpAcceptor::local_socket_addr`]).
    pub async fn bind(addr: impl ToSocketAddrs, tls: Option<TlsServer>) -> io::Result<TcpAcceptor> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(TcpAcceptor {
            listener,
            local,
            tls,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            done_tx,
            done_rx,
            handshakes: VecDeque::new(),
            next_handshake: 0,
            backoff: AcceptBackoff::new(format!("link {local}")),
            paused_until: None,
        })
    }

    /// Bounds the TLS handshake of each accepted connection.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TcpAcceptor {
        self.handshake_timeout = timeout;
        self
    }

    /// The bound address.
    pub fn local_socket_addr(&self) -> SocketAddr {
        self.local
    }
}

impl TcpAcceptor {
    /// Takes an accepted connection: a plain link at once, or a TLS handshake
    /// started in a task of its own (`None`: wait for it).
    /// When [`MAX_HANDSHAKES`] are in progress, the oldest is closed, and
    /// reported as this call's error.
    fn take(&mut self, stream: TcpStream, peer: SocketAddr) -> io::Result<Option<TcpLink>> {
        stream.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Some(TcpLink::plain(stream, peer)));
        };
        let (acceptor, timeout, tx) = (
            tls.acceptor.clone(),
            self.handshake_timeout,
            self.done_tx.clone(),
        );
        let id = self.next_handshake;
        self.next_handshake += 1;
        let task = tokio::spawn(async move {
            let r = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => Ok(TcpLink::tls(stream, peer)),
                Ok(Err(e)) => Err(io::Error::new(
                    e.kind(),
                    format!("TLS handshake with {peer} failed: {e}"),
                )),
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("TLS handshake with {peer} timed out"),
                )),
            };
            let _ = tx.send((id, r));
        });
        let oldest = if self.handshakes.len() >= MAX_HANDSHAKES {
            self.handshakes.pop_front()
        } else {
            None
        };
        self.handshakes.push_back(Handshaking {
            id,
            peer,
            task: task.abort_handle(),
        });
        match oldest {
            Some(h) => {
                h.task.abort();
                Err(io::Error::other(format!(
                    "TLS handshake with {} closed: {MAX_HANDSHAKES} in progress and another \
                     client connected",
                    h.peer
                )))
            }
            None => Ok(None),
        }
    }

    /// A TLS handshake ended: it is no longer in progress.
    fn handshake_done(&mut self, id: u64) {
        self.handshakes.retain(|h| h.id != id);
    }
}

impl Drop for TcpAcceptor {
    fn drop(&mut self) {
        // Handshakes in progress have nobody to hand their link to.
        for h in &self.handshakes {
            h.task.abort();
        }
    }
}

impl Acceptor for TcpAcceptor {
    type Link = TcpLink;

    /// The next link. An error concerns one connection (a failed or refused
    /// TLS handshake); failures of `accept()` itself for want of resources
    /// (`EMFILE`, `ENFILE`, ...) are waited out here, with a pause.
    async fn accept(&mut self) -> io::Result<TcpLink> {
        loop {
            let paused = self.paused_until;
            let resume = tokio::time::sleep_until(paused.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                Some((id, done)) = self.done_rx.recv() => {
                    self.handshake_done(id);
                    return done;
                }
                _ = resume, if paused.is_some() => self.paused_until = None,
                accepted = self.listener.accept(), if paused.is_none() => match accepted {
                    Ok((stream, peer)) => {
                        self.backoff.succeeded();
                        if let Some(link) = self.take(stream, peer)? {
                            return Ok(link);
                        }
                    }
                    Err(e) => {
                        let pause = self.backoff.failed(&e);
                        if !pause.is_zero() {
                            self.paused_until = Some(tokio::time::Instant::now() + pause);
                        }
                    }
                },
            }
        }
    }

    fn local_addr(&self) -> String {
        self.local.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_part() {
        assert_eq!(host_of("gw-a:7400"), "gw-a");
        assert_eq!(host_of("10.0.0.1:7400"), "10.0.0.1");
        assert_eq!(host_of("[::1]:7400"), "::1");
        assert_eq!(host_of("noport"), "noport");
    }
}
