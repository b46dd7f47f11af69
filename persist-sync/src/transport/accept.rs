//! What an accept loop does when `accept()` fails.
//!
//! Some failures concern one incoming connection only (it was reset or
//! aborted before it was taken): the next `accept()` may succeed at once.
//! Others concern the process or the machine: out of file descriptors
//! (`EMFILE`, `ENFILE`), of buffers or of memory. Retrying those at once
//! spins: the listening socket stays readable, so every retry fails the same
//! way straight away (about half a core was measured on the link port).
//! [`AcceptBackoff`] tells an accept loop how long to pause instead, with a
//! pause that doubles up to [`MAX_PAUSE`], and logs one line when such an
//! episode starts and one when it ends, never one per attempt.
//!
//! Used by [`TcpAcceptor`](super::tcp::TcpAcceptor) and by the gateway's
//! HTTP operator surface.

use std::io;
use std::time::{Duration, Instant};

/// First pause after a failure that is not the connection's own.
pub const FIRST_PAUSE: Duration = Duration::from_millis(10);

/// Longest pause between two attempts during an episode: how late, at most,
/// a listener notices that descriptors are free again.
pub const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Whether a failed `accept()` concerns only the connection it would have
/// returned (retry at once) rather than the process or the machine.
///
/// These are the errors Linux's accept(2) says to treat like `EAGAIN`
/// (a connection reset or aborted while queued, a network error on it).
pub fn concerns_one_connection(e: &io::Error) -> bool {
    use io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted
            | ConnectionReset
            | ConnectionRefused
            | Interrupted
            | WouldBlock
            | TimedOut
            | HostUnreachable
            | NetworkUnreachable
            | NetworkDown
    )
}

/// Pacing and logging of an accept loop's failures (see the module docs).
#[derive(Debug)]
pub struct AcceptBackoff {
    what: String,
    next_pause: Duration,
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Episode {
    since: Instant,
    failures: u64,
}

impl AcceptBackoff {
    /// A backoff for the listener described by `what` (for logs, e.g.
    /// `"link 127.0.0.1:7400"`).
    pub fn new(what: impl Into<String>) -> AcceptBackoff {
        AcceptBackoff {
            what: what.into(),
            next_pause: FIRST_PAUSE,
            episode: None,
        }
    }

    /// Takes a failed `accept()`; returns how long to wait before the next
    /// attempt ([`Duration::ZERO`]: the error concerned one connection).
    /// Logs the first failure of an episode only.
    pub fn failed(&mut self, e: &io::Error) -> Duration {
        if concerns_one_connection(e) {
            tracing::debug!(listener = %self.what, "an incoming connection failed before it was accepted: {e}");
            return Duration::ZERO;
        }
        let pause = self.next_pause;
        self.next_pause = (pause * 2).min(MAX_PAUSE);
        match &mut self.episode {
            Some(ep) => ep.failures += 1,
            None => {
                tracing::warn!(
                    listener = %self.what,
                    "cannot accept connections: {e}; retrying every {MAX_PAUSE:?} at most until it works"
                );
                self.episode = Some(Episode {
                    since: Instant::now(),
                    failures: 1,
                });
            }
        }
        pause
    }

    /// Takes a successful `accept()`: ends an episode of failures (logged once).
    pub fn succeeded(&mut self) {
        self.next_pause = FIRST_PAUSE;
        if let Some(ep) = self.episode.take() {
            tracing::warn!(
                listener = %self.what,
                failures = ep.failures,
                "accepting connections again after {:.1?}",
                ep.since.elapsed()
            );
        }
    }

    /// Whether the listener is in an episode of failures.
    pub fn failing(&self) -> bool {
        self.episode.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> io::Error {
        // What accept(2) returns out of descriptors, as std reports it.
        io::Error::from_raw_os_error(24)
    }

    #[test]
    fn a_connection_error_is_retried_at_once() {
        let mut b = AcceptBackoff::new("test");
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(b.failed(&reset), Duration::ZERO);
        assert!(!b.failing());
    }

    #[test]
    fn out_of_descriptors_pauses_longer_each_time_up_to_the_cap_then_resets() {
        let mut b = AcceptBackoff::new("test");
        let pauses: Vec<Duration> = (0..10).map(|_| b.failed(&emfile())).collect();
        assert_eq!(pauses[0], FIRST_PAUSE);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]), "{pauses:?}");
        assert_eq!(*pauses.last().unwrap(), MAX_PAUSE);
        assert!(b.failing());
        b.succeeded();
        assert!(!b.failing());
        assert_eq!(b.failed(&emfile()), FIRST_PAUSE);
    }
}
