//! Links that carry whole frames between two nodes.
//!
//! A [`Link`] is a bidirectional, ordered, reliable-until-it-fails channel of
//! frames (byte vectors). It knows nothing of messages: encoding lives above
//! it, in [`crate::codec`]. A link splits into a [`FrameSink`] and a
//! [`FrameSource`] so a session can read and write concurrently from two
//! tasks. The receiving half has a maximum frame size: a longer frame is an
//! error reported before the frame is read into memory.
//!
//! Implementations:
//! - [`tcp`]: TCP, length-delimited frames, optional TLS ([`tls`]).
//! - `testing::memory` (feature `testing`): an in-process network with
//!   fault injection for tests.

use std::future::Future;
use std::io;

pub mod accept;
pub mod tcp;
pub mod tls;

/// Maximum frame size a fresh link accepts: the pre-authentication limit
/// ([`crate::codec::Limits::handshake`]). Raise it with
/// [`FrameSource::set_max_frame`] once the peer is authenticated.
pub const INITIAL_MAX_FRAME: usize = crate::codec::Limits::handshake().max_frame;

/// The sending half of a link.
pub trait FrameSink: Send + 'static {
    /// Sends one frame. An error means the link is unusable.
    fn send(&mut self, frame: Vec<u8>) -> impl Future<Output = io::Result<()>> + Send;

    /// Flushes and closes the sending direction (the peer's source then sees
    /// a clean end). Dropping the sink closes it too, without flushing.
    fn close(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// The receiving half of a link.
pub trait FrameSource: Send + 'static {
    /// Receives the next frame; `Ok(None)` when the peer closed the link
    /// cleanly. A frame longer than the maximum is an error
    /// ([`io::ErrorKind::InvalidData`]) raised before it is buffered.
    fn recv(&mut self) -> impl Future<Output = io::Result<Option<Vec<u8>>>> + Send;

    /// Sets the largest frame [`FrameSource::recv`] accepts, in bytes.
    fn set_max_frame(&mut self, max: usize);

    /// The remote end, for logs (an address or a node name).
    fn peer(&self) -> String;
}

/// A connected link, before it is split.
pub trait Link: Send + 'static {
    /// The sending half.
    type Sink: FrameSink;
    /// The receiving half.
    type Source: FrameSource;

    /// Splits the link into halves usable from different tasks. The link is
    /// closed when both halves are dropped.
    fn split(self) -> (Self::Sink, Self::Source);

    /// The remote end, for logs (an address or a node name).
    fn peer(&self) -> String;
}

/// Opens links to one peer (the backup's side).
pub trait Dialer: Send + Sync + 'static {
    /// The links it opens.
    type Link: Link;

    /// Opens a new link. Each call is a new connection.
    fn dial(&self) -> impl Future<Output = io::Result<Self::Link>> + Send;
}

/// Accepts links from peers (the master's side).
pub trait Acceptor: Send + 'static {
    /// The links it accepts.
    type Link: Link;

    /// Waits for the next link. An error concerns one incoming connection
    /// only (a failed TLS handshake): keep accepting after it. A listener
    /// that cannot accept for want of resources waits that out itself (it
    /// must not make its caller spin).
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Link>> + Send;

    /// The address or name peers dial.
    fn local_addr(&self) -> String;
}

/// The error a source returns for a frame over its limit.
pub(crate) fn frame_too_large(len: usize, max: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame of {len} bytes exceeds the limit of {max} bytes"),
    )
}
