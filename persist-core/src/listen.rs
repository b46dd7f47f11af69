//! Record listeners: added / updated / deleted events after commit.
//!
//! The committing thread hands each subscription one message per commit that
//! touches its table, through a bounded crossbeam channel, with `try_send`:
//! the writer never blocks on a listener. When a subscription's channel is
//! full, further commits are not queued for it; instead it receives a single
//! [`RecordEvent::Lagged`] carrying how many commits it missed, as soon as
//! there is room again, in its place in commit order. A listener that lags
//! must re-read what it cares about (e.g. `store.list()`), exactly as after a
//! restart. Memory per subscription is therefore bounded by its capacity
//! (default [`DEFAULT_CAPACITY`] commits), whatever the listener's speed.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};

use crate::error::{DecodeError, Error};
use crate::log::Op;
use crate::record::PersistentRecord;
use crate::value::Value;

/// Commits a subscription can hold before it lags.
pub const DEFAULT_CAPACITY: usize = 1024;

/// One captured row change of a commit.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// Table name.
    pub table: &'static str,
    /// What happened.
    pub op: Op,
    /// The row before (updates and deletes).
    pub old: Option<Vec<Value>>,
    /// The row after (inserts and updates).
    pub new: Option<Vec<Value>>,
}

/// The changes of one committed transaction.
#[derive(Debug)]
pub struct Commit {
    /// The log position of the transaction.
    pub position: u64,
    /// Its row changes in commit order.
    pub changes: Vec<RowChange>,
    /// The log entry as stored.
    pub entry: Arc<crate::log::LogEntry>,
}

#[derive(Debug)]
pub(crate) enum Message {
    Commit(Arc<Commit>),
    Lagged(u64),
    Reset,
}

pub(crate) struct Subscriber {
    /// `None`: all tables (raw commit feed).
    table: Option<&'static str>,
    tx: Sender<Message>,
    /// Commits dropped while the channel was full, not yet reported. Shared
    /// with the receiver: whichever side finds it non-zero first reports it,
    /// the writer as a `Lagged` message before its next commit, the receiver
    /// once it has drained the channel; both places are its spot in commit order.
    missed: Arc<AtomicU64>,
}

/// The writer-side list of subscriptions.
#[derive(Default)]
pub(crate) struct Listeners {
    subs: Vec<Subscriber>,
    hooks: Vec<(u64, CommitHook)>,
    next_hook: u64,
}

/// What a commit hook is told.
#[derive(Debug)]
pub enum CommitEvent<'a> {
    /// A transaction committed (or an entry was applied).
    Commit(&'a Arc<Commit>),
    /// The data was replaced by a full resync.
    Reset,
}

/// A function run in the committing thread right after each commit, while
/// the writer still holds its lock: it must be quick and must not block or
/// call back into the store (see [`crate::Store::add_commit_hook`]).
pub type CommitHook = Arc<dyn Fn(CommitEvent<'_>) + Send + Sync>;

/// Identifies a hook for [`crate::Store::remove_commit_hook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookId(u64);

impl Listeners {
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty() && self.hooks.is_empty()
    }

    /// Whether any record subscription or commit feed wants row changes
    /// (hooks alone only need the entry).
    pub fn wants_rows(&self) -> bool {
        !self.subs.is_empty()
    }

    pub fn add_hook(&mut self, hook: CommitHook) -> HookId {
        self.next_hook += 1;
        self.hooks.push((self.next_hook, hook));
        HookId(self.next_hook)
    }

    pub fn remove_hook(&mut self, id: HookId) {
        self.hooks.retain(|(i, _)| *i != id.0);
    }

    pub fn add(&mut self, table: Option<&'static str>, capacity: usize) -> Inbox {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let missed = Arc::new(AtomicU64::new(0));
        self.subs.push(Subscriber {
            table,
            tx,
            missed: missed.clone(),
        });
        Inbox { rx, missed }
    }

    /// Tells every subscription that all data was replaced. Queued commits
    /// before it stay valid history; a full channel gets the notice later,
    /// through its missed count (a lag also means: re-read).
    pub fn reset(&mut self) {
        self.subs
            .retain_mut(|s| match s.tx.try_send(Message::Reset) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.missed.fetch_add(1, Ordering::AcqRel);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// Hands a commit to every interested subscription without blocking.
    pub fn dispatch(&mut self, commit: Commit) {
        if self.is_empty() {
            return;
        }
        let commit = Arc::new(commit);
        for (_, hook) in &self.hooks {
            hook(CommitEvent::Commit(&commit));
        }
        self.deliver(commit);
    }

    /// Row changes that are not a log entry (a ranged repair): subscriptions
    /// get them, commit hooks (which ship entries) do not.
    pub(crate) fn dispatch_to_subscribers(&mut self, commit: Commit) {
        self.deliver(Arc::new(commit));
    }

    fn deliver(&mut self, commit: Arc<Commit>) {
        if commit.changes.is_empty() {
            return;
        }
        self.subs.retain_mut(|s| {
            if let Some(t) = s.table {
                if !commit.changes.iter().any(|c| c.table == t) {
                    // A dropped subscription is noticed at its next relevant commit.
                    return true;
                }
            }
            if s.tx.is_full() {
                s.missed.fetch_add(1, Ordering::AcqRel);
                return true;
            }
            let missed = s.missed.swap(0, Ordering::AcqRel);
            if missed > 0 {
                match s.tx.try_send(Message::Lagged(missed)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        s.missed.fetch_add(missed + 1, Ordering::AcqRel);
                        return true;
                    }
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            match s.tx.try_send(Message::Commit(commit.clone())) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.missed.fetch_add(1, Ordering::AcqRel);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
    }
}

/// The receiving end of a subscription.
pub(crate) struct Inbox {
    rx: Receiver<Message>,
    missed: Arc<AtomicU64>,
}

impl Inbox {
    /// A lag report if commits were dropped and the channel is drained.
    fn drained_lag(&self) -> Option<Message> {
        if !self.rx.is_empty() {
            return None;
        }
        match self.missed.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(Message::Lagged(n)),
        }
    }

    fn try_recv(&self) -> Result<Option<Message>, RecvError> {
        match self.rx.try_recv() {
            Ok(m) => Ok(Some(m)),
            Err(TryRecvError::Empty) => Ok(self.drained_lag()),
            Err(TryRecvError::Disconnected) => Err(RecvError::Closed),
        }
    }

    fn recv_deadline(&self, deadline: Option<std::time::Instant>) -> Result<Message, RecvError> {
        if let Some(m) = self.try_recv()? {
            return Ok(m);
        }
        match deadline {
            None => self.rx.recv().map_err(|_| RecvError::Closed),
            Some(d) => self.rx.recv_deadline(d).map_err(|e| match e {
                RecvTimeoutError::Timeout => RecvError::Timeout,
                RecvTimeoutError::Disconnected => RecvError::Closed,
            }),
        }
    }
}

/// An event for a record type.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordEvent<R> {
    /// A record was inserted.
    Added(R),
    /// A record was changed.
    Updated {
        /// Before the change.
        old: R,
        /// After the change.
        new: R,
    },
    /// A record was deleted (directly or by a cascade).
    Deleted(R),
    /// The listener fell behind and this many commits were not delivered;
    /// re-read the records you track.
    Lagged(u64),
    /// Every table was replaced by a full resync from the master; re-read
    /// the records you track.
    Reset,
}

/// Why a subscription yielded no event.
#[derive(Debug, thiserror::Error)]
pub enum RecvError {
    /// The store was dropped.
    #[error("the store was closed")]
    Closed,
    /// No event within the timeout.
    #[error("no event within the timeout")]
    Timeout,
    /// A row could not be decoded as the record type.
    #[error("cannot decode a {table} row: {source}")]
    Decode {
        /// The table.
        table: &'static str,
        /// Why.
        #[source]
        source: DecodeError,
    },
}

impl From<RecvError> for Error {
    fn from(e: RecvError) -> Self {
        Error::Database(e.to_string())
    }
}

/// Events of one record type, in commit order. Dropping it unsubscribes.
pub struct Subscription<R> {
    rx: Inbox,
    table: &'static str,
    pending: VecDeque<RecordEvent<R>>,
    _marker: PhantomData<fn() -> R>,
}

impl<R: PersistentRecord> Subscription<R> {
    pub(crate) fn new(rx: Inbox) -> Self {
        Subscription {
            rx,
            table: R::meta().table,
            pending: VecDeque::new(),
            _marker: PhantomData,
        }
    }

    fn decode(&self, row: Option<&Vec<Value>>) -> Result<R, RecvError> {
        let row = row.cloned().ok_or(RecvError::Decode {
            table: self.table,
            source: DecodeError::Malformed("change without row image".into()),
        })?;
        R::from_row(row).map_err(|source| RecvError::Decode {
            table: self.table,
            source,
        })
    }

    fn absorb(&mut self, msg: Message) -> Result<(), RecvError> {
        match msg {
            Message::Lagged(n) => self.pending.push_back(RecordEvent::Lagged(n)),
            Message::Reset => self.pending.push_back(RecordEvent::Reset),
            Message::Commit(c) => {
                for ch in c.changes.iter().filter(|ch| ch.table == self.table) {
                    let ev = match ch.op {
                        // Operations announce themselves through their record changes.
                        Op::Operation => continue,
                        Op::Insert => RecordEvent::Added(self.decode(ch.new.as_ref())?),
                        Op::Update => RecordEvent::Updated {
                            old: self.decode(ch.old.as_ref())?,
                            new: self.decode(ch.new.as_ref())?,
                        },
                        Op::Delete => RecordEvent::Deleted(self.decode(ch.old.as_ref())?),
                    };
                    self.pending.push_back(ev);
                }
            }
        }
        Ok(())
    }

    fn next(&mut self, deadline: Option<std::time::Instant>) -> Result<RecordEvent<R>, RecvError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let msg = self.rx.recv_deadline(deadline)?;
            self.absorb(msg)?;
        }
    }

    /// Waits for the next event.
    pub fn recv(&mut self) -> Result<RecordEvent<R>, RecvError> {
        self.next(None)
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<RecordEvent<R>, RecvError> {
        self.next(Some(std::time::Instant::now() + timeout))
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Result<Option<RecordEvent<R>>, RecvError> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            match self.rx.try_recv()? {
                Some(msg) => self.absorb(msg)?,
                None => return Ok(None),
            }
        }
    }
}

/// Every commit, all tables: the feed the sync worker wakes on.
pub struct CommitFeed {
    pub(crate) rx: Inbox,
}

/// An item of the [`CommitFeed`].
#[derive(Debug, Clone)]
pub enum FeedItem {
    /// A commit.
    Commit(Arc<Commit>),
    /// This many commits were dropped because the feed was full.
    Lagged(u64),
    /// The store's data was replaced by a full resync.
    Reset,
}

impl CommitFeed {
    fn item(m: Message) -> FeedItem {
        match m {
            Message::Commit(c) => FeedItem::Commit(c),
            Message::Lagged(n) => FeedItem::Lagged(n),
            Message::Reset => FeedItem::Reset,
        }
    }

    /// Waits for the next commit.
    pub fn recv(&self) -> Result<FeedItem, RecvError> {
        self.rx.recv_deadline(None).map(Self::item)
    }

    /// Waits up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<FeedItem, RecvError> {
        self.rx
            .recv_deadline(Some(std::time::Instant::now() + timeout))
            .map(Self::item)
    }

    /// The next item if one is ready.
    pub fn try_recv(&self) -> Result<Option<FeedItem>, RecvError> {
        Ok(self.rx.try_recv()?.map(Self::item))
    }
}
