//! The simulated network between the two nodes: connections with an end
//! at each node (its incarnation and the core's link number), in-order
//! delivery per direction, and the faults in force.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::clock::Time;
use crate::engine::ConnId;

#[derive(Debug)]
pub struct NetConn {
    /// Each node's end: (incarnation, link number), once it knows of it.
    ends: [Option<(u64, ConnId)>; 2],
    open: bool,
    /// The last delivery time towards each node (frames keep their order).
    last: [Time; 2],
}

/// The network and its faults.
#[derive(Debug, Default)]
pub struct Net {
    pub conns: BTreeMap<u64, NetConn>,
    pub next: u64,
    /// Frames in both directions vanish (a pulled cable, no reset).
    pub partitioned: bool,
    /// Frames towards this node vanish.
    pub drop_to: [bool; 2],
    /// Extra latency.
    pub delay: Duration,
    /// Share of frames delivered twice.
    pub duplicate: f64,
    /// Share of frames lost.
    pub loss: f64,
}

impl Net {
    /// A connection dialed by `dialer` (its link `conn`) to `acceptor`.
    pub fn open(&mut self, dialer: usize, inc: u64, conn: ConnId, acceptor: usize) -> u64 {
        self.next += 1;
        let mut ends = [None, None];
        ends[dialer] = Some((inc, conn));
        let _ = acceptor;
        self.conns.insert(
            self.next,
            NetConn {
                ends,
                open: true,
                last: [Time::ZERO; 2],
            },
        );
        self.next
    }

    /// The acceptor learned of the connection; false if it is gone already.
    pub fn accepted(&mut self, net: u64, node: usize, inc: u64, conn: ConnId) -> bool {
        match self.conns.get_mut(&net) {
            Some(c) if c.open && c.ends[node].is_none() => {
                c.ends[node] = Some((inc, conn));
                true
            }
            _ => false,
        }
    }

    /// `node`'s link number for `net`, if this incarnation has that end.
    pub fn end(&self, net: u64, node: usize, inc: u64) -> Option<ConnId> {
        let c = self.conns.get(&net)?;
        match c.ends[node] {
            Some((i, conn)) if i == inc => Some(conn),
            _ => None,
        }
    }

    /// The node at the other end of `net` from `from`.
    pub fn other(&self, net: u64, from: usize) -> Option<usize> {
        self.conns.contains_key(&net).then_some(1 - from)
    }

    pub fn is_open(&self, net: u64) -> bool {
        self.conns.get(&net).is_some_and(|c| c.open)
    }

    /// Frames from `from` to `to` vanish.
    pub fn blocked(&self, from: usize, to: usize) -> bool {
        let _ = from;
        self.partitioned || self.drop_to[to]
    }

    /// When a frame sent now arrives at `to`, given `at` (order kept).
    pub fn fifo(&mut self, net: u64, to: usize, at: Time) -> Time {
        let Some(c) = self.conns.get_mut(&net) else {
            return at;
        };
        let t = at.max(c.last[to] + Duration::from_micros(1));
        c.last[to] = t;
        t
    }

    pub fn close(&mut self, net: u64) {
        if let Some(c) = self.conns.get_mut(&net) {
            c.open = false;
        }
    }

    /// Every open connection is reset; returns them with both ends.
    pub fn reset(&mut self) -> Vec<(u64, usize, usize)> {
        let mut out = Vec::new();
        for (net, c) in &mut self.conns {
            if c.open {
                c.open = false;
                out.push((*net, 0, 1));
            }
        }
        out
    }

    /// Whether any fault that slows or loses frames is in force.
    pub fn faulty(&self) -> bool {
        self.partitioned
            || self.drop_to.iter().any(|d| *d)
            || self.loss > 0.0
            || !self.delay.is_zero()
    }
}
