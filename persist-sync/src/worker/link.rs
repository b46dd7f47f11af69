//! Frame I/O of one link: a reader task that decodes frames within limits
//! and a writer task that encodes and sends what the node hands it. They
//! only move bytes; every decision is the node's, but for one rule of the
//! writer: a heartbeat goes out ahead of the stream frames (log entries,
//! snapshot frames) queued before it, so it never waits behind megabytes
//! of them while the peer's silence timer runs.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::codec::{self, Limits};
use crate::engine::{is_stream_frame, ConnId, Input};
use crate::protocol::Message;
use crate::transport::{FrameSink, FrameSource, Link};

/// How long a closing link may take to send what it was given.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Frames the peer may send before it is authenticated (its hello and its
/// proof): the reader reads no further until the node has decided.
const PRE_AUTH_FRAMES: usize = 2;

/// Aborts a task when dropped (a link's tasks die with the link).
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How far the node has taken a link; the reader follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// The node task has not been handed the link yet: nothing the reader
    /// sees may reach the node before the link does (a hello already waiting
    /// when the link was accepted would reach a node that does not know the
    /// link, and be dropped).
    Unregistered,
    /// The node knows the link; the peer is not authenticated yet.
    Handshake,
    /// The peer authenticated: full frame limits.
    Authenticated,
}

/// The node's end of a link.
pub(crate) struct LinkHandle {
    frames: mpsc::UnboundedSender<Message>,
    phase: watch::Sender<Phase>,
    reader: AbortOnDrop<()>,
    writer: Option<JoinHandle<()>>,
}

impl LinkHandle {
    /// Queues a message; the writer encodes it (the node task never spends
    /// time in proportion to a frame's size).
    pub fn send(&self, msg: Message) {
        let _ = self.frames.send(msg);
    }

    /// The node task holds the link: what the reader sees goes to the node
    /// from now on. Called before the node is told of the link, by the task
    /// that tells it, so the link comes first.
    pub fn registered(&self) {
        self.phase.send_if_modified(|p| {
            let was = *p;
            *p = (*p).max(Phase::Handshake);
            *p != was
        });
    }

    /// The peer authenticated: full frame limits from now on.
    pub fn authenticated(&self) {
        self.phase.send_replace(Phase::Authenticated);
    }

    /// Closes the link: the reader stops now, the writer sends what it was
    /// given and closes, within a grace period.
    pub fn close(mut self) {
        self.reader.0.abort();
        if let Some(writer) = self.writer.take() {
            tokio::spawn(async move {
                let abort = writer.abort_handle();
                if tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
                    abort.abort();
                }
            });
        }
    }
}

impl Drop for LinkHandle {
    fn drop(&mut self) {
        if let Some(w) = &self.writer {
            w.abort();
        }
    }
}

/// Starts the reader and writer of `link`; what they see goes to `events`
/// once the node task has the handle ([`LinkHandle::registered`]).
pub(crate) fn start<L: Link>(
    link: L,
    conn: ConnId,
    limits: Limits,
    events: mpsc::Sender<Input>,
) -> LinkHandle {
    let (mut sink, mut source) = link.split();
    let (frames, mut queue) = mpsc::unbounded_channel::<Message>();
    let (phase, mut seen) = watch::channel(Phase::Unregistered);
    let to_node = events.clone();
    let writer = tokio::spawn(async move {
        let mut pending = VecDeque::new();
        loop {
            if pending.is_empty() {
                match queue.recv().await {
                    Some(msg) => pending.push_back(msg),
                    None => break,
                }
            }
            while let Ok(msg) = queue.try_recv() {
                pending.push_back(msg);
            }
            let Some(msg) = next_frame(&mut pending) else {
                continue;
            };
            let stream = is_stream_frame(&msg);
            let frame = codec::encode(&msg);
            drop(msg);
            if let Err(e) = sink.send(frame).await {
                let error = Some(e.to_string());
                let _ = to_node.send(Input::Closed { conn, error }).await;
                return;
            }
            // The node bounds the stream frames it queues: tell it each one left.
            if stream && to_node.send(Input::Sent { conn, frames: 1 }).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let reader = tokio::spawn(async move {
        if seen.wait_for(|p| *p >= Phase::Handshake).await.is_err() {
            return;
        }
        let mut read = 0usize;
        loop {
            if read >= PRE_AUTH_FRAMES && *seen.borrow() != Phase::Authenticated {
                // The peer's hello and proof are in: wait for the verdict
                // before reading anything larger from it.
                if seen.wait_for(|p| *p == Phase::Authenticated).await.is_err() {
                    return;
                }
            }
            let lim = if *seen.borrow() == Phase::Authenticated {
                limits
            } else {
                Limits::handshake()
            };
            source.set_max_frame(lim.max_frame);
            let input = match source.recv().await {
                Ok(Some(frame)) => match codec::decode(&frame, &lim) {
                    Ok(msg) => Input::Frame { conn, msg },
                    Err(e) => Input::Malformed {
                        conn,
                        error: e.to_string(),
                    },
                },
                Ok(None) => Input::Closed { conn, error: None },
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Input::Malformed {
                    conn,
                    error: e.to_string(),
                },
                Err(e) => Input::Closed {
                    conn,
                    error: Some(e.to_string()),
                },
            };
            read += 1;
            let more = matches!(input, Input::Frame { .. });
            if events.send(input).await.is_err() || !more {
                return;
            }
        }
    });
    LinkHandle {
        frames,
        phase,
        reader: AbortOnDrop(reader),
        writer: Some(writer),
    }
}

/// The next message to send: the first queued, except that a heartbeat
/// goes ahead of the stream frames queued before it (never ahead of any
/// other frame: a proof, a plan, an acknowledgement keep their order).
fn next_frame(pending: &mut VecDeque<Message>) -> Option<Message> {
    match pending.iter().position(|m| !is_stream_frame(m)) {
        Some(i) if i > 0 && matches!(pending[i], Message::Heartbeat { .. }) => pending.remove(i),
        _ => pending.pop_front(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NodeRole;

    fn beat(epoch: u64) -> Message {
        Message::Heartbeat {
            epoch,
            position: 0,
            role: NodeRole::Master,
            active: None,
            sent: 1,
            echo: 0,
        }
    }

    fn kinds(mut q: VecDeque<Message>) -> Vec<String> {
        std::iter::from_fn(|| next_frame(&mut q))
            .map(|m| match m {
                Message::Heartbeat { epoch, .. } => format!("beat{epoch}"),
                Message::Entries(_) => "entries".into(),
                Message::SnapshotEnd => "end".into(),
                other => other.kind().to_string(),
            })
            .collect()
    }

    #[test]
    fn heartbeats_overtake_stream_frames_only() {
        let q = VecDeque::from([
            Message::Entries(Vec::new()),
            Message::Entries(Vec::new()),
            beat(1),
            Message::SnapshotEnd,
            Message::Ack { position: 3 },
            beat(2),
            Message::Entries(Vec::new()),
            beat(3),
        ]);
        assert_eq!(
            kinds(q),
            ["beat1", "entries", "entries", "end", "Ack", "beat2", "beat3", "entries"]
        );
    }
}
