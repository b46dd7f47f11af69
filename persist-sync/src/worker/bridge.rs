//! From the store's commit feed (crossbeam, blocking) to tokio: a thread that
//! publishes the head position on a watch channel and keeps the most recent
//! entries in memory, so a session streaming a live master ships a fresh
//! commit without reading it back from the database.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use parking_lot::Mutex;
use persist_core::listen::FeedItem;
use persist_core::{LogEntry, Store};
use tokio::sync::watch;

/// Recent entries, contiguous by position.
#[derive(Debug, Default)]
pub(crate) struct Recent {
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
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Bridge {
    pub fn start(store: Store) -> std::io::Result<Bridge> {
        let feed = store.commit_feed(4096);
        let (tx, head) = watch::channel(store.position());
        let recent = Arc::new(Mutex::new(Recent::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (recent.clone(), stop.clone());
        let thread = thread::Builder::new()
            .name("persist-commit-feed".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match feed.recv_timeout(Duration::from_millis(100)) {
                        Ok(FeedItem::Commit(c)) => {
                            r.lock().push(c.entry.clone());
                            tx.send_replace(c.position);
                        }
                        Ok(FeedItem::Lagged(_) | FeedItem::Reset) => {
                            r.lock().clear();
                            tx.send_replace(store.position());
                        }
                        Err(persist_core::listen::RecvError::Timeout) => {
                            let p = store.position();
                            if *tx.borrow() != p {
                                tx.send_replace(p);
                            }
                        }
                        Err(_) => break,
                    }
                }
            })?;
        Ok(Bridge {
            head,
            recent,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
