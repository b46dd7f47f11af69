//! From the store's commits to tokio: a commit hook that publishes the head
//! position on a watch channel and keeps the most recent entries in memory,
//! so a session streaming a live master ships a fresh commit without reading
//! it back from the database, and without a thread hop in between.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use persist_core::listen::{CommitEvent, HookId};
use persist_core::{LogEntry, Store};
use tokio::sync::watch;

/// Recent entries of a master, contiguous by position (filled by its commit hook).
#[derive(Debug, Default)]
pub struct Recent {
    entries: VecDeque<Arc<LogEntry>>,
    bytes: usize,
}

/// Bytes of entry bodies the ring keeps, at most.
const RECENT_BYTES: usize = 64 << 20;

impl Recent {
    fn push(&mut self, e: Arc<LogEntry>) {
        if self
            .entries
            .back()
            .is_some_and(|b| b.position + 1 != e.position)
        {
            // A gap (lagged feed or a restore): what is kept must be contiguous.
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += e.body.len();
        self.entries.push_back(e);
        while self.bytes > RECENT_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= old.body.len(),
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries from `from` on, up to `max` entries and about `max_bytes`, if
    /// the ring holds `from`.
    pub fn take(&self, from: u64, max: usize, max_bytes: usize) -> Option<Vec<LogEntry>> {
        let first = self.entries.front()?.position;
        if from < first {
            return None;
        }
        let start = (from - first) as usize;
        if start >= self.entries.len() {
            return None;
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in self.entries.iter().skip(start).take(max) {
            if !out.is_empty() && bytes + e.body.len() > max_bytes {
                break;
            }
            bytes += e.body.len();
            out.push(LogEntry::clone(e));
        }
        Some(out)
    }
}

pub(crate) struct Bridge {
    pub head: watch::Receiver<u64>,
    pub recent: Arc<Mutex<Recent>>,
    store: Store,
    hook: HookId,
}

impl Bridge {
    pub fn start(store: Store) -> Bridge {
        let (tx, head) = watch::channel(store.position());
        let recent = Arc::new(Mutex::new(Recent::default()));
        let r = recent.clone();
        // Runs in the committing thread: a push and a watch update, nothing
        // that blocks. No thread hop between a commit and its session.
        let hook = store.add_commit_hook(move |event| match event {
            CommitEvent::Commit(c) => {
                r.lock().push(c.entry.clone());
                tx.send_replace(c.position);
            }
            CommitEvent::Reset => {
                r.lock().clear();
                tx.send_modify(|_| {});
            }
        });
        // A commit between reading the position and adding the hook is
        // covered: sessions also read the store's published position.
        Bridge {
            head,
            recent,
            store,
            hook,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.store.remove_commit_hook(self.hook);
    }
}
