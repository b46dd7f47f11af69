//! The node task: feeds a [`NodeCore`] with what happens (frames, closed
//! links, finished store operations, commits, timers, commands) and carries
//! out what it answers. It never waits for the store: store work goes to
//! the node's [`StoreExecutor`], whose results come back as inputs.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::config::{ConfigError, SyncConfig};
use super::executor::{StoreExecutor, StoreWorker};
use super::link::{self, AbortOnDrop, LinkHandle};
use super::status::{AckTracker, LinkStatus};
use crate::clock::{Clock, TokioClock};
use crate::codec::Limits;
use crate::engine::{
    Command, CommandError, ConnId, Input, NodeCore, NodeParams, NodeReport, Output, Role,
};
use crate::history::History;
use crate::redundancy::machine::{RedundancySettings, SettingsError};
use crate::redundancy::node::StatePublisher;
use crate::redundancy::witness::{LeaseAction, LeaseEvent, WitnessClient, WitnessSettings};
use crate::runtime_state::RuntimeStates;
use crate::transport::{Acceptor, Dialer, Link};
use tokio::task::JoinHandle;

/// Accepted links are numbered from here (the core numbers its dials from 1).
pub(crate) const FIRST_ACCEPTED: ConnId = 1 << 48;

/// A command and where its answer goes.
pub(crate) type Request = (Command, oneshot::Sender<Result<(), CommandError>>);

/// What the node task publishes, shared with the handles.
pub(crate) struct Published {
    pub status: watch::Sender<LinkStatus>,
    pub acks: Arc<AckTracker>,
    pub state: Option<StatePublisher>,
}

/// What the node task works with.
pub(crate) struct Driver<A, D, P> {
    pub core: NodeCore,
    pub store: persist_core::Store,
    pub clock: TokioClock,
    pub limits: Limits,
    pub handshake_timeout: std::time::Duration,
    pub acceptor: Option<A>,
    pub dialer: Option<Arc<D>>,
    pub probe: Option<Arc<P>>,
    pub executor: StoreExecutor,
    pub store_done: mpsc::UnboundedReceiver<(u64, crate::engine::StoreResult)>,
    pub requests: mpsc::Receiver<Request>,
    pub head: Option<watch::Receiver<u64>>,
    pub runtime_changed: Option<watch::Receiver<u64>>,
    pub history_changed: Option<watch::Receiver<u64>>,
    pub published: Arc<Published>,
    /// Keeps the master's commit hook in place while the node runs.
    pub _bridge: Option<super::bridge::Bridge>,
    /// The witness and the bound on one request to it.
    pub witness: Option<(Arc<dyn WitnessClient>, std::time::Duration)>,
}

async fn changed(rx: &mut Option<watch::Receiver<u64>>) -> Option<u64> {
    match rx {
        Some(r) => match r.changed().await {
            Ok(()) => Some(*r.borrow_and_update()),
            Err(_) => {
                *rx = None;
                None
            }
        },
        None => std::future::pending().await,
    }
}

/// The node task's links, dials in progress and pending answers.
struct Io {
    links: HashMap<ConnId, LinkHandle>,
    dials: HashMap<ConnId, AbortOnDrop<()>>,
    replies: HashMap<u64, oneshot::Sender<Result<(), CommandError>>>,
    answers: Vec<(u64, Result<(), CommandError>)>,
    next_command: u64,
    events: mpsc::Sender<Input>,
    dialed: mpsc::Sender<(ConnId, Result<LinkHandle, String>)>,
    /// The witness request in flight (the core asks one at a time).
    lease: Option<AbortOnDrop<()>>,
}

impl Io {
    /// Sends the answers of commands whose effect is published.
    fn answer(&mut self) {
        for (id, result) in self.answers.drain(..) {
            if let Some(tx) = self.replies.remove(&id) {
                let _ = tx.send(result);
            }
        }
    }
}

/// A link the accept loop hands the node task: its number, remote address
/// and tasks.
type AcceptedLink = (ConnId, String, LinkHandle);

/// Accepts links and starts their tasks; accepted links are numbered from
/// [`FIRST_ACCEPTED`]. A connection that failed before it became a link
/// goes to the core, which counts and logs it (rate-limited: a flood of
/// them must not flood the log).
fn accept_loop<A: Acceptor>(
    mut acceptor: A,
    limits: Limits,
    events: mpsc::Sender<Input>,
    accepted: mpsc::Sender<AcceptedLink>,
) -> AbortOnDrop<()> {
    AbortOnDrop(tokio::spawn(async move {
        let mut next = FIRST_ACCEPTED;
        loop {
            let sent = match acceptor.accept().await {
                Ok(l) => {
                    let addr = l.peer();
                    let handle = link::start(l, next, limits, events.clone());
                    next += 1;
                    accepted.send((next - 1, addr, handle)).await.is_ok()
                }
                Err(e) => {
                    let error = e.to_string();
                    events.send(Input::AcceptFailed { error }).await.is_ok()
                }
            };
            if !sent {
                return;
            }
        }
    }))
}

impl<A: Acceptor, D: Dialer, P: Dialer> Driver<A, D, P> {
    /// Runs the node until it is shut down.
    pub async fn run(mut self) {
        let (events_tx, mut events) = mpsc::channel::<Input>(1024);
        let (accepted_tx, mut accepted) = mpsc::channel(16);
        let (dialed_tx, mut dialed) = mpsc::channel(16);
        let _accept = self
            .acceptor
            .take()
            .map(|a| accept_loop(a, self.limits, events_tx.clone(), accepted_tx));
        let mut io = Io {
            links: HashMap::new(),
            dials: HashMap::new(),
            replies: HashMap::new(),
            answers: Vec::new(),
            next_command: 0,
            events: events_tx,
            dialed: dialed_tx,
            lease: None,
        };
        let mut last_report = None;
        let mut outputs = self.core.step(self.clock.now(), Input::Tick);
        loop {
            let stopped = self.carry_out(&mut io, outputs);
            let report = self.core.report(self.clock.now());
            if last_report.as_ref() != Some(&report) {
                self.publish(&report);
                last_report = Some(report);
            }
            // Answered once the state shows the command's effect.
            io.answer();
            if stopped {
                break;
            }
            outputs = self
                .next_input(&mut io, &mut events, &mut accepted, &mut dialed)
                .await;
        }
        for (_, l) in io.links.drain() {
            l.close();
        }
        io.dials.clear();
        io.lease = None;
        // What the core handed the store last (a restore given up, a claim)
        // runs before the node is gone.
        self.executor.finish().await;
    }

    /// Waits for the next input and feeds it to the core.
    async fn next_input(
        &mut self,
        io: &mut Io,
        events: &mut mpsc::Receiver<Input>,
        accepted: &mut mpsc::Receiver<AcceptedLink>,
        dialed: &mut mpsc::Receiver<(ConnId, Result<LinkHandle, String>)>,
    ) -> Vec<Output> {
        let deadline = self.core.deadline();
        let clock = self.clock.clone();
        let sleep = async move {
            match deadline {
                Some(t) => tokio::time::sleep_until(clock.instant(t)).await,
                None => std::future::pending().await,
            }
        };
        // Inputs first: a frame that arrived before an overdue deadline is
        // heard before the deadline is acted on (a busy machine must not
        // fail over from a master whose heartbeat is waiting in the queue).
        let mut outputs = tokio::select! {
            biased;
            Some(input) = events.recv() => self.core.step(self.clock.now(), input),
            Some((id, result)) = self.store_done.recv() => {
                self.core.step(self.clock.now(), Input::Store { id, result })
            }
            Some((conn, addr, handle)) = accepted.recv() => {
                handle.registered();
                io.links.insert(conn, handle);
                self.core.step(self.clock.now(), Input::Accepted { conn, addr })
            }
            Some((conn, r)) = dialed.recv() => {
                io.dials.remove(&conn);
                let input = match r {
                    Ok(handle) => {
                        handle.registered();
                        io.links.insert(conn, handle);
                        Input::Dialed { conn }
                    }
                    Err(error) => Input::DialFailed { conn, error },
                };
                self.core.step(self.clock.now(), input)
            }
            Some(p) = changed(&mut self.head) => self.core.step(self.clock.now(), Input::Head(p)),
            Some(_) = changed(&mut self.runtime_changed) => {
                self.core.step(self.clock.now(), Input::RuntimeChanged)
            }
            Some(_) = changed(&mut self.history_changed) => {
                self.core.step(self.clock.now(), Input::HistoryChanged)
            }
            request = self.requests.recv() => match request {
                Some((command, reply)) => {
                    io.next_command += 1;
                    io.replies.insert(io.next_command, reply);
                    self.core.command(self.clock.now(), io.next_command, command)
                }
                // Every handle is gone: stop as if asked to.
                None => self.core.command(self.clock.now(), 0, Command::Shutdown),
            },
            _ = sleep => self.core.step(self.clock.now(), Input::Tick),
        };
        // Timers are not starved by a steady stream of inputs.
        let now = self.clock.now();
        if self.core.deadline().is_some_and(|d| d <= now) {
            outputs.extend(self.core.step(now, Input::Tick));
        }
        outputs
    }

    /// Carries out what the core answered; true once it stopped.
    fn carry_out(&mut self, io: &mut Io, outputs: Vec<Output>) -> bool {
        let mut stopped = false;
        for o in outputs {
            match o {
                Output::Dial { conn, probe } => self.dial(io, conn, probe),
                Output::Send { conn, msg } => {
                    if let Some(l) = io.links.get(&conn) {
                        l.send(msg);
                    }
                }
                Output::Authenticated { conn } => {
                    if let Some(l) = io.links.get(&conn) {
                        l.authenticated();
                    }
                }
                Output::Close { conn } => {
                    io.dials.remove(&conn);
                    if let Some(l) = io.links.remove(&conn) {
                        l.close();
                    }
                }
                Output::Store { id, op } => self.executor.submit(id, op),
                Output::Acked { position, reset } => self.published.acks.set(position, reset),
                Output::Gate(reason) => self.store.set_write_gate(reason),
                Output::Reply { id, result } => io.answers.push((id, result)),
                Output::Stopped => stopped = true,
                Output::Lease(action) => self.ask_witness(io, action),
            }
        }
        stopped
    }

    /// Dials a link in a task of its own (bounded by the handshake timeout).
    fn dial(&mut self, io: &mut Io, conn: ConnId, probe: bool) {
        let (timeout, limits) = (self.handshake_timeout, self.limits);
        let (events, dialed) = (io.events.clone(), io.dialed.clone());
        let task = match (probe, &self.probe, &self.dialer) {
            (true, Some(p), _) => spawn_dial(p.clone(), conn, timeout, limits, events, dialed),
            (false, _, Some(d)) => spawn_dial(d.clone(), conn, timeout, limits, events, dialed),
            _ => tokio::spawn(async move {
                let _ = dialed
                    .send((conn, Err("no dialer for this link".into())))
                    .await;
            }),
        };
        io.dials.insert(conn, AbortOnDrop(task));
    }

    /// Asks the witness in a task of its own, bounded by its request
    /// timeout; the answer comes back as an input.
    fn ask_witness(&mut self, io: &mut Io, action: LeaseAction) {
        let Some((witness, bound)) = &self.witness else {
            return;
        };
        let (witness, bound, events) = (witness.clone(), *bound, io.events.clone());
        io.lease = Some(AbortOnDrop(tokio::spawn(async move {
            let seq = action.seq();
            let event = match tokio::time::timeout(bound, witness.request(action)).await {
                Ok(event) => event,
                Err(_) => LeaseEvent::Unreachable {
                    seq,
                    error: format!("the witness did not answer within {bound:?}"),
                },
            };
            let _ = events.send(Input::Lease(event)).await;
        })));
    }

    fn publish(&self, report: &NodeReport) {
        let position = self.store.position();
        let status = LinkStatus {
            connected: report.connected,
            peer: report.peer.clone(),
            position,
            peer_acked: report.peer_acked,
            last_sync: report.last_sync.map(|t| self.clock.wall(t)),
            last_error: report.last_error.clone(),
            refused: report.refused.clone(),
            resyncs: report.resyncs,
            snapshot_progress: report.snapshot_progress,
            peer_modules: report.peer_modules.clone(),
            module_warnings: report.module_warnings.clone(),
            unauthenticated_failures: report.unauthenticated_failures,
            scrub: report.scrub.clone(),
        };
        self.published.status.send_if_modified(|s| {
            if *s != status {
                *s = status.clone();
                true
            } else {
                false
            }
        });
        if let (Some(p), Some(r)) = (&self.published.state, &report.redundancy) {
            let last_sync = report.last_sync.map(|t| self.clock.wall(t));
            p.publish(report, r, last_sync);
        }
    }
}

fn spawn_dial<X: Dialer>(
    dialer: Arc<X>,
    conn: ConnId,
    timeout: std::time::Duration,
    limits: Limits,
    events: mpsc::Sender<Input>,
    dialed: mpsc::Sender<(ConnId, Result<LinkHandle, String>)>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let r = dial(&*dialer, timeout)
            .await
            .map(|l| link::start(l, conn, limits, events));
        let _ = dialed.send((conn, r)).await;
    })
}

async fn dial<D: Dialer>(dialer: &D, timeout: std::time::Duration) -> Result<D::Link, String> {
    match tokio::time::timeout(timeout, dialer.dial()).await {
        Ok(Ok(l)) => Ok(l),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {timeout:?}")),
    }
}

/// What starting a node needs besides its links.
pub(crate) struct Start {
    pub store: persist_core::Store,
    pub role: Role,
    pub sync: SyncConfig,
    pub redundancy: Option<RedundancySettings>,
    pub runtime: Option<Arc<RuntimeStates>>,
    pub history: Option<Arc<History>>,
    pub probe_every: Option<std::time::Duration>,
    pub state: Option<StatePublisher>,
    pub witness: Option<(WitnessSettings, Arc<dyn WitnessClient>)>,
}

/// A started node: what its handles share.
pub(crate) struct Started {
    pub published: Arc<Published>,
    pub requests: mpsc::Sender<Request>,
    pub task: JoinHandle<()>,
}

/// Why a node or sync worker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A sync setting cannot work.
    #[error("sync settings: {0}")]
    Sync(#[from] ConfigError),
    /// A redundancy setting cannot work.
    #[error("redundancy settings: {0}")]
    Redundancy(#[from] SettingsError),
    /// The settings contradict each other.
    #[error("{0}")]
    Mismatch(String),
    /// A witness setting cannot work.
    #[error("witness settings: {0}")]
    Witness(#[from] crate::redundancy::witness::WitnessSettingsError),
    /// A thread could not be started.
    #[error("starting the node: {0}")]
    Io(#[from] std::io::Error),
}

/// Starts a node's task on the current tokio runtime.
pub(crate) fn spawn<A: Acceptor, D: Dialer, P: Dialer>(
    s: Start,
    acceptor: Option<A>,
    dialer: Option<D>,
    probe: Option<P>,
) -> Result<Started, StartError> {
    s.sync.validate()?;
    if let Some(r) = &s.redundancy {
        r.validate()?;
        if r.node_id != s.sync.auth.node_id {
            return Err(StartError::Mismatch(format!(
                "the redundancy settings name node {:?}, the link authenticates as {:?}",
                r.node_id, s.sync.auth.node_id
            )));
        }
    }
    match (&s.witness, &s.redundancy) {
        (Some((w, _)), Some(r)) => w.validate(r.failover_timeout)?,
        (Some(_), None) => {
            return Err(StartError::Mismatch(
                "a witness fences a redundant pair: this node runs no redundancy".into(),
            ))
        }
        (None, _) => {}
    }
    let clock = TokioClock::new();
    let store = s.store;
    let bridge = match s.role {
        Role::Master => Some(super::bridge::Bridge::start(store.clone())),
        Role::Backup => None,
    };
    let recent = bridge.as_ref().map(|b| b.recent.clone());
    let make = {
        let (store, history, recent, clock) = (
            store.clone(),
            s.history.clone(),
            recent.clone(),
            clock.clone(),
        );
        move || StoreWorker::new(store, history, recent, Arc::new(clock))
    };
    let (done_tx, store_done) = mpsc::unbounded_channel();
    let executor = StoreExecutor::start(&s.sync.auth.node_id, make, recent, done_tx)?;
    let core = NodeCore::new(
        NodeParams {
            role: s.role,
            redundancy: s.redundancy,
            witness: s.witness.as_ref().map(|(w, _)| w.clone()),
            claim: store.claim(),
            position: store.position(),
            schema: store.schema_fingerprint(),
            history_id: store.history(),
            runtime: s.runtime.clone(),
            history: s.history.is_some(),
            probe_every: s.probe_every.filter(|_| probe.is_some()),
            nonces: Box::new(|| {
                crate::auth::fresh_nonce().unwrap_or_else(|e| {
                    // Without randomness the handshake cannot be made safe.
                    panic!("{e}")
                })
            }),
            sync: s.sync.clone(),
        },
        clock.now(),
    );
    let published = Arc::new(Published {
        status: watch::Sender::new(LinkStatus {
            position: store.position(),
            ..LinkStatus::default()
        }),
        acks: AckTracker::new(0),
        state: s.state,
    });
    let (requests, requests_rx) = mpsc::channel(16);
    let driver = Driver {
        core,
        store,
        clock,
        limits: s.sync.limits,
        handshake_timeout: s.sync.handshake_timeout,
        acceptor,
        dialer: dialer.map(Arc::new),
        probe: probe.map(Arc::new),
        executor,
        store_done,
        requests: requests_rx,
        head: bridge.as_ref().map(|b| b.head.clone()),
        runtime_changed: s.runtime.as_ref().map(|r| r.subscribe()),
        history_changed: s.history.as_ref().map(|h| h.subscribe()),
        published: published.clone(),
        _bridge: bridge,
        witness: s.witness.map(|(w, client)| (client, w.request_timeout)),
    };
    let task = tokio::spawn(driver.run());
    Ok(Started {
        published,
        requests,
        task,
    })
}

/// A link type for a node that has no acceptor or dialer of some kind.
pub(crate) enum Nowhere {}

impl crate::transport::FrameSink for Nowhere {
    async fn send(&mut self, _frame: Vec<u8>) -> std::io::Result<()> {
        match *self {}
    }
    async fn close(&mut self) -> std::io::Result<()> {
        match *self {}
    }
}

impl crate::transport::FrameSource for Nowhere {
    async fn recv(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        match *self {}
    }
    fn set_max_frame(&mut self, _max: usize) {
        match *self {}
    }
    fn peer(&self) -> String {
        match *self {}
    }
}

impl crate::transport::Link for Nowhere {
    type Sink = Nowhere;
    type Source = Nowhere;
    fn split(self) -> (Nowhere, Nowhere) {
        match self {}
    }
    fn peer(&self) -> String {
        match *self {}
    }
}

impl Dialer for Nowhere {
    type Link = Nowhere;
    async fn dial(&self) -> std::io::Result<Nowhere> {
        match *self {}
    }
}

impl Acceptor for Nowhere {
    type Link = Nowhere;
    async fn accept(&mut self) -> std::io::Result<Nowhere> {
        match *self {}
    }
    fn local_addr(&self) -> String {
        match *self {}
    }
}
