//! Applying a log entry from the master: the whole transaction atomically,
//! verified against the master's digest, recorded at the master's position.

use crate::error::{Error, Result};
use crate::log::{LogEntry, Op};

use super::schema::Table;
use super::write::WriteTx;
use super::{check_image, Registry, Writer};
use crate::value::Value;

/// What [`Store::apply`](super::Store::apply) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry was applied; it held this many row changes.
    Applied {
        /// Row changes applied.
        changes: usize,
    },
    /// The entry's position was already applied; nothing was done.
    AlreadyApplied,
}

fn inapplicable(position: u64, reason: impl Into<String>) -> Error {
    Error::Inapplicable {
        position,
        reason: reason.into(),
    }
}

pub(crate) fn apply_batch(w: &mut Writer, reg: &Registry, entries: &[LogEntry]) -> Result<usize> {
    let first = w.position + 1;
    let todo: Vec<&LogEntry> = entries.iter().filter(|e| e.position >= first).collect();
    if todo.is_empty() {
        return Ok(0);
    }
    for (expected, e) in (first..).zip(&todo) {
        if e.position != expected {
            return Err(Error::Gap {
                expected,
                got: e.position,
            });
        }
    }
    let mut tx = WriteTx::begin(w, reg)?;
    // The master's body is stored as-is; no need to build one.
    tx.logging = false;
    let mut commits = Vec::with_capacity(todo.len());
    for entry in todo.iter().copied() {
        apply_one(&mut tx, reg, entry)?;
        if let Some(c) = tx.record_entry(
            entry.position,
            entry.epoch,
            entry.committed_at,
            Some((&entry.body, entry.digest)),
        )? {
            commits.push(c);
        }
    }
    tx.finish(commits)?;
    Ok(todo.len())
}

fn apply_one(tx: &mut WriteTx<'_>, reg: &Registry, entry: &LogEntry) -> Result<()> {
    let position = entry.position;
    let changes = entry.changes().map_err(|source| Error::Decode {
        context: format!("log entry {position}"),
        source,
    })?;
    // Consecutive inserts into one table go in as multi-row statements.
    let mut pending: Option<(&Table, Vec<Value>)> = None;
    let flush = |tx: &mut WriteTx<'_>, pending: &mut Option<(&Table, Vec<Value>)>| -> Result<()> {
        if let Some((t, flat)) = pending.take() {
            tx.insert_rows(t, flat).map_err(|e| match e {
                e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
                other => inapplicable(position, format!("{} insert: {other}", t.name)),
            })?;
        }
        Ok(())
    };
    for ch in &changes {
        let t = reg.tables.get(ch.table).ok_or_else(|| {
            inapplicable(
                position,
                format!("table {} is not registered on this node", ch.table),
            )
        })?;
        let wrap = |e: Error| match e {
            e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
            other => inapplicable(position, format!("{} {:?}: {other}", ch.table, ch.op)),
        };
        match ch.op {
            Op::Insert => {
                let values = check_image(t, ch.payload).map_err(|r| inapplicable(position, r))?;
                match &mut pending {
                    Some((pt, flat)) if std::ptr::eq(*pt, t) => flat.extend(values),
                    _ => {
                        flush(tx, &mut pending)?;
                        pending = Some((t, values));
                    }
                }
            }
            Op::Update => {
                flush(tx, &mut pending)?;
                let values = check_image(t, ch.payload).map_err(|r| inapplicable(position, r))?;
                tx.update_row(t, values, false).map_err(wrap)?;
            }
            Op::Delete => {
                flush(tx, &mut pending)?;
                let key = ch.key().map_err(|source| Error::Decode {
                    context: format!("log entry {position}, {} key", ch.table),
                    source,
                })?;
                if !key.fits(t.key_type()) || key.is_null() {
                    return Err(inapplicable(
                        position,
                        format!("{}: key of kind {}", t.name, key.kind()),
                    ));
                }
                tx.delete_row(t, key, false).map_err(wrap)?;
            }
        }
    }
    flush(tx, &mut pending)?;
    if tx.digest != entry.digest {
        return Err(Error::Divergence {
            position,
            local: tx.digest,
            remote: entry.digest,
        });
    }
    Ok(())
}
