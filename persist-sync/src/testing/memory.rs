//! An in-process network for deterministic fault tests, in the spirit of
//! raft-rs's `harness/src/network.rs` and openraft's test fixtures.
//!
//! A [`MemoryNetwork`] connects [`MemoryDialer`]s to [`MemoryAcceptor`]s by
//! name. Each [`MemoryLink`] is two tokio mpsc channels, one per direction,
//! with a *fault stage* (a task) in the middle that decides, frame by frame,
//! whether to pass, drop, duplicate or delay it. The test steers the stage at
//! run time through the link's [`FaultHandle`]:
//!
//! | fault | effect |
//! |---|---|
//! | [`FaultHandle::cut`] | both directions closed now; in-flight frames are lost; both ends' `send` and `recv` fail |
//! | [`FaultHandle::partition`] | frames silently dropped while on; the link stays "up" (a pulled cable, no RST) |
//! | [`FaultHandle::drop_rate`] | each frame dropped with this probability (seeded RNG) |
//! | [`FaultHandle::duplicate_rate`] | each passing frame delivered twice with this probability |
//! | [`FaultHandle::delay`] | each frame delivered this long after it was sent (order kept) |
//! | [`FaultHandle::on_frame`] | a hook that sees every frame and returns a [`Verdict`] |
//!
//! The network itself can be partitioned ([`MemoryNetwork::partition`]):
//! every link drops its frames and dialing fails. Dialing also fails when no
//! acceptor has the name (or it was dropped).
//!
//! Random decisions use one RNG per link direction, seeded from the
//! network's seed ([`MemoryNetwork::with_seed`]) and the link's number, so a
//! test replays the same drops whatever the task scheduling.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::transport::{
    frame_too_large, Acceptor, Dialer, FrameSink, FrameSource, Link, INITIAL_MAX_FRAME,
};

/// Frames buffered per hop (sender to stage, stage to receiver); a full
/// buffer makes `send` wait, as a full socket buffer does.
const HOP_CAPACITY: usize = 64;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test hook must not wedge the rest of the network.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The direction a frame travels on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Sent by the dialer, received by the acceptor.
    ToAcceptor,
    /// Sent by the acceptor, received by the dialer.
    ToDialer,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToAcceptor => 0,
            Direction::ToDialer => 1,
        }
    }
}

/// What the fault stage does with one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Pass,
    /// Lose it silently.
    Drop,
    /// Deliver it twice.
    Duplicate,
}

/// Counters of one direction of a link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Frames sent into the link.
    pub sent: u64,
    /// Frames dropped (partition, drop rate or hook).
    pub dropped: u64,
    /// Frames delivered twice.
    pub duplicated: u64,
    /// Copies handed to the receiver's buffer.
    pub delivered: u64,
}

#[derive(Default)]
struct DirCounters {
    sent: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delivered: AtomicU64,
}

type Hook = Arc<dyn Fn(Direction, &[u8]) -> Verdict + Send + Sync>;

#[derive(Default)]
struct Faults {
    partitioned: bool,
    drop_rate: f64,
    duplicate_rate: f64,
    delay: Duration,
    hook: Option<Hook>,
}

struct LinkCtl {
    id: u64,
    net_partitioned: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
    faults: Mutex<Faults>,
    counters: [DirCounters; 2],
}

impl LinkCtl {
    fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }

    fn decide(&self, dir: Direction, frame: &[u8], rng: &mut SplitMix) -> (Verdict, Duration) {
        let (partitioned, drop_rate, duplicate_rate, delay, hook) = {
            let f = lock(&self.faults);
            (
                f.partitioned,
                f.drop_rate,
                f.duplicate_rate,
                f.delay,
                f.hook.clone(),
            )
        };
        // Always draw both numbers so one fault setting does not shift the
        // random sequence the other sees.
        let (roll_drop, roll_dup) = (rng.next_f64(), rng.next_f64());
        // The hook runs outside the lock: it may call back into the handle.
        let hooked = hook.map_or(Verdict::Pass, |h| h(dir, frame));
        let verdict = if partitioned || self.net_partitioned.load(Ordering::SeqCst) {
            Verdict::Drop
        } else if hooked != Verdict::Pass {
            hooked
        } else if roll_drop < drop_rate {
            Verdict::Drop
        } else if roll_dup < duplicate_rate {
            Verdict::Duplicate
        } else {
            Verdict::Pass
        };
        (verdict, delay)
    }
}

/// Controls the faults of one link (both ends share it). Cloning gives
/// another handle to the same link.
#[derive(Clone)]
pub struct FaultHandle {
    ctl: Arc<LinkCtl>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field("link", &self.ctl.id)
            .field("cut", &self.ctl.is_cut())
            .finish_non_exhaustive()
    }
}

fn probability(p: f64) -> f64 {
    if p.is_nan() {
        0.0
    } else {
        p.clamp(0.0, 1.0)
    }
}

impl FaultHandle {
    /// The link's number in its network (0 for the first link dialed).
    pub fn link_id(&self) -> u64 {
        self.ctl.id
    }

    /// Closes both directions now: frames in flight are lost, and both ends'
    /// `send` and `recv` return [`io::ErrorKind::ConnectionReset`].
    pub fn cut(&self) {
        self.ctl.cut.send_replace(true);
    }

    /// Whether [`FaultHandle::cut`] was called.
    pub fn is_cut(&self) -> bool {
        self.ctl.is_cut()
    }

    /// While `on`, every frame is dropped silently and neither end notices.
    pub fn partition(&self, on: bool) {
        lock(&self.ctl.faults).partitioned = on;
    }

    /// Drops each frame with probability `p` (clamped to 0..=1).
    pub fn drop_rate(&self, p: f64) {
        lock(&self.ctl.faults).drop_rate = probability(p);
    }

    /// Delivers each passing frame twice with probability `p` (clamped to
    /// 0..=1).
    pub fn duplicate_rate(&self, p: f64) {
        lock(&self.ctl.faults).duplicate_rate = probability(p);
    }

    /// Delivers each frame `delay` after it was sent; order is kept.
    pub fn delay(&self, delay: Duration) {
        lock(&self.ctl.faults).delay = delay;
    }

    /// Installs a hook that sees every frame sent on the link (before the
    /// other faults) and decides its fate. A partition still drops what the
    /// hook passes; a non-[`Verdict::Pass`] verdict overrides the drop and
    /// duplicate rates.
    pub fn on_frame(&self, hook: impl Fn(Direction, &[u8]) -> Verdict + Send + Sync + 'static) {
        lock(&self.ctl.faults).hook = Some(Arc::new(hook));
    }

    /// Removes the hook.
    pub fn clear_hook(&self) {
        lock(&self.ctl.faults).hook = None;
    }

    /// Clears every fault except a cut.
    pub fn heal(&self) {
        *lock(&self.ctl.faults) = Faults::default();
    }

    /// The counters of one direction.
    pub fn stats(&self, dir: Direction) -> FaultStats {
        let c = &self.ctl.counters[dir.index()];
        FaultStats {
            sent: c.sent.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            duplicated: c.duplicated.load(Ordering::SeqCst),
            delivered: c.delivered.load(Ordering::SeqCst),
        }
    }
}

/// SplitMix64: tiny, seedable, good enough to decide drops.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Called with each new link before its first frame.
type LinkHook = Arc<dyn Fn(FaultHandle) + Send + Sync>;

struct NetState {
    acceptors: HashMap<String, mpsc::UnboundedSender<MemoryLink>>,
    links: Vec<Weak<LinkCtl>>,
    next_link: u64,
    on_link: Option<LinkHook>,
}

struct Net {
    seed: u64,
    partitioned: Arc<AtomicBool>,
    state: Mutex<NetState>,
}

/// An in-process network (see the module docs). Cloning gives another
/// handle to the same network.
#[derive(Clone)]
pub struct MemoryNetwork {
    net: Arc<Net>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork")
            .field("seed", &self.net.seed)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new()
    }
}

impl MemoryNetwork {
    /// A network with seed 0.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::with_seed(0)
    }

    /// A network whose random faults derive from `seed`.
    pub fn with_seed(seed: u64) -> MemoryNetwork {
        MemoryNetwork {
            net: Arc::new(Net {
                seed,
                partitioned: Arc::new(AtomicBool::new(false)),
                state: Mutex::new(NetState {
                    acceptors: HashMap::new(),
                    links: Vec::new(),
                    next_link: 0,
                    on_link: None,
                }),
            }),
        }
    }

    /// Listens under `name`, replacing any acceptor of that name.
    pub fn acceptor(&self, name: &str) -> MemoryAcceptor {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.net.state)
            .acceptors
            .insert(name.to_owned(), tx.clone());
        MemoryAcceptor {
            net: self.net.clone(),
            name: name.to_owned(),
            tx,
            rx,
        }
    }

    /// A dialer that connects to the acceptor named `name`.
    pub fn dialer(&self, name: &str) -> MemoryDialer {
        MemoryDialer {
            net: self.net.clone(),
            target: name.to_owned(),
        }
    }

    /// While `on`, every link drops its frames and dialing fails with
    /// [`io::ErrorKind::TimedOut`].
    pub fn partition(&self, on: bool) {
        self.net.partitioned.store(on, Ordering::SeqCst);
    }

    /// Calls `hook` with every link dialed from now on, before its first
    /// frame, so a test can fault a link from its very start (e.g. install a
    /// frame hook that acts on the third snapshot frame).
    pub fn on_link(&self, hook: impl Fn(FaultHandle) + Send + Sync + 'static) {
        lock(&self.net.state).on_link = Some(Arc::new(hook));
    }

    /// Cuts every open link (see [`FaultHandle::cut`]).
    pub fn cut_all(&self) {
        for link in self.links() {
            link.cut();
        }
    }

    /// Handles of the links still open (at least one end alive, not cut), in
    /// dialing order.
    pub fn links(&self) -> Vec<FaultHandle> {
        let mut state = lock(&self.net.state);
        state.links.retain(|w| w.strong_count() > 0);
        state
            .links
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|ctl| !ctl.is_cut())
            .map(|ctl| FaultHandle { ctl })
            .collect()
    }
}

/// Accepts links dialed to its name.
pub struct MemoryAcceptor {
    net: Arc<Net>,
    name: String,
    tx: mpsc::UnboundedSender<MemoryLink>,
    rx: mpsc::UnboundedReceiver<MemoryLink>,
}

impl std::fmt::Debug for MemoryAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAcceptor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryAcceptor {
    fn drop(&mut self) {
        let mut state = lock(&self.net.state);
        if state
            .acceptors
            .get(&self.name)
            .is_some_and(|tx| tx.same_channel(&self.tx))
        {
            state.acceptors.remove(&self.name);
        }
    }
}

impl Acceptor for MemoryAcceptor {
    type Link = MemoryLink;

    async fn accept(&mut self) -> io::Result<MemoryLink> {
        // The acceptor holds a sender itself, so the channel never closes.
        self.rx
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "memory acceptor closed"))
    }

    fn local_addr(&self) -> String {
        self.name.clone()
    }
}

/// Dials one named acceptor.
#[derive(Clone)]
pub struct MemoryDialer {
    net: Arc<Net>,
    target: String,
}

impl std::fmt::Debug for MemoryDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDialer")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Dialer for MemoryDialer {
    type Link = MemoryLink;

    async fn dial(&self) -> io::Result<MemoryLink> {
        if self.net.partitioned.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("cannot reach {}: network partitioned", self.target),
            ));
        }
        let mut state = lock(&self.net.state);
        let refused = || {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("no acceptor named {}", self.target),
            )
        };
        let accept_tx = state
            .acceptors
            .get(&self.target)
            .ok_or_else(refused)?
            .clone();
        let id = state.next_link;
        state.next_link += 1;
        let (cut, _) = watch::channel(false);
        let ctl = Arc::new(LinkCtl {
            id,
            net_partitioned: self.net.partitioned.clone(),
            cut,
            faults: Mutex::new(Faults::default()),
            counters: Default::default(),
        });
        let seed = SplitMix(self.net.seed ^ id.wrapping_mul(0xA076_1D64_78BD_642F)).next_u64();
        let (d_sink, a_source) = pipe(&ctl, Direction::ToAcceptor, seed, self.target.clone());
        let (a_sink, d_source) = pipe(&ctl, Direction::ToDialer, seed ^ 1, format!("dialer#{id}"));
        let faults = FaultHandle { ctl: ctl.clone() };
        if let Some(hook) = &state.on_link {
            hook(faults.clone());
        }
        let accepted = MemoryLink {
            sink: a_sink,
            source: a_source,
            faults: faults.clone(),
            peer: format!("dialer#{id}"),
        };
        if accept_tx.send(accepted).is_err() {
            state.acceptors.remove(&self.target);
            return Err(refused());
        }
        state.links.push(Arc::downgrade(&ctl));
        Ok(MemoryLink {
            sink: d_sink,
            source: d_source,
            faults,
            peer: self.target.clone(),
        })
    }
}

/// One direction: the sender's sink, the stage task, the receiver's source.
/// `sender` names the sending end, for the receiver's logs.
fn pipe(
    ctl: &Arc<LinkCtl>,
    dir: Direction,
    seed: u64,
    sender: String,
) -> (MemorySink, MemorySource) {
    let (in_tx, in_rx) = mpsc::channel(HOP_CAPACITY);
    let (out_tx, out_rx) = mpsc::channel(HOP_CAPACITY);
    tokio::spawn(stage(in_rx, out_tx, ctl.clone(), dir, SplitMix(seed)));
    (
        MemorySink {
            tx: Some(in_tx),
            ctl: ctl.clone(),
            dir,
        },
        MemorySource {
            rx: out_rx,
            ctl: ctl.clone(),
            cut: ctl.cut.subscribe(),
            max_frame: INITIAL_MAX_FRAME,
            peer: sender,
        },
    )
}

async fn stage(
    mut input: mpsc::Receiver<(Instant, Vec<u8>)>,
    output: mpsc::Sender<Vec<u8>>,
    ctl: Arc<LinkCtl>,
    dir: Direction,
    mut rng: SplitMix,
) {
    let mut cut = ctl.cut.subscribe();
    let counters = &ctl.counters[dir.index()];
    loop {
        let (sent_at, frame) = tokio::select! {
            biased;
            _ = cut.wait_for(|c| *c) => return,
            next = input.recv() => match next {
                Some(next) => next,
                // The sender closed: dropping `output` ends the receiver cleanly.
                None => return,
            },
        };
        let (verdict, delay) = ctl.decide(dir, &frame, &mut rng);
        let copies = match verdict {
            Verdict::Drop => {
                counters.dropped.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            Verdict::Pass => 1,
            Verdict::Duplicate => {
                counters.duplicated.fetch_add(1, Ordering::SeqCst);
                2
            }
        };
        if !delay.is_zero() {
            tokio::select! {
                biased;
                _ = cut.wait_for(|c| *c) => return,
                () = tokio::time::sleep_until(sent_at + delay) => {}
            }
        }
        for _ in 0..copies {
            tokio::select! {
                biased;
                _ = cut.wait_for(|c| *c) => return,
                sent = output.send(frame.clone()) => {
                    if sent.is_err() {
                        // The receiver is gone: dropping `input` fails the sender.
                        return;
                    }
                    counters.delivered.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
}

fn reset() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "memory link cut")
}

/// One end of a memory link, before it is split.
pub struct MemoryLink {
    sink: MemorySink,
    source: MemorySource,
    faults: FaultHandle,
    peer: String,
}

impl std::fmt::Debug for MemoryLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLink")
            .field("peer", &self.peer)
            .field("link", &self.faults.link_id())
            .finish_non_exhaustive()
    }
}

impl MemoryLink {
    /// The fault controls of this link (shared with the other end).
    pub fn faults(&self) -> FaultHandle {
        self.faults.clone()
    }
}

impl Link for MemoryLink {
    type Sink = MemorySink;
    type Source = MemorySource;

    fn split(self) -> (MemorySink, MemorySource) {
        (self.sink, self.source)
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}

/// The sending half of a [`MemoryLink`].
pub struct MemorySink {
    tx: Option<mpsc::Sender<(Instant, Vec<u8>)>>,
    ctl: Arc<LinkCtl>,
    dir: Direction,
}

impl FrameSink for MemorySink {
    async fn send(&mut self, frame: Vec<u8>) -> io::Result<()> {
        if self.ctl.is_cut() {
            return Err(reset());
        }
        let Some(tx) = &self.tx else {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "sink closed"));
        };
        self.ctl.counters[self.dir.index()]
            .sent
            .fetch_add(1, Ordering::SeqCst);
        tx.send((Instant::now(), frame)).await.map_err(|_| {
            if self.ctl.is_cut() {
                reset()
            } else {
                io::Error::new(io::ErrorKind::BrokenPipe, "peer closed the memory link")
            }
        })
    }

    async fn close(&mut self) -> io::Result<()> {
        self.tx = None;
        Ok(())
    }
}

/// The receiving half of a [`MemoryLink`].
pub struct MemorySource {
    rx: mpsc::Receiver<Vec<u8>>,
    ctl: Arc<LinkCtl>,
    cut: watch::Receiver<bool>,
    max_frame: usize,
    peer: String,
}

impl MemorySource {
    fn partitioned(&self) -> bool {
        lock(&self.ctl.faults).partitioned || self.ctl.net_partitioned.load(Ordering::SeqCst)
    }
}

impl FrameSource for MemorySource {
    async fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        let next = tokio::select! {
            biased;
            _ = self.cut.wait_for(|c| *c) => return Err(reset()),
            next = self.rx.recv() => next,
        };
        match next {
            // The stage also ends on a cut: that is not a clean close.
            None if self.ctl.is_cut() => Err(reset()),
            None => {
                // A clean close is a FIN, which a pulled cable does not
                // carry either: it arrives when the partition heals.
                while self.partitioned() {
                    tokio::select! {
                        biased;
                        _ = self.cut.wait_for(|c| *c) => return Err(reset()),
                        _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
                    }
                }
                Ok(None)
            }
            Some(frame) if frame.len() > self.max_frame => {
                Err(frame_too_large(frame.len(), self.max_frame))
            }
            Some(frame) => Ok(Some(frame)),
        }
    }

    fn set_max_frame(&mut self, max: usize) {
        self.max_frame = max;
    }

    fn peer(&self) -> String {
        self.peer.clone()
    }
}
