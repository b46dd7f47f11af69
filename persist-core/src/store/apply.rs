//! Applying a log entry from the master: the whole transaction atomically,
//! verified against the master's digest, recorded at the master's position.

use crate::error::{Error, Result};
use crate::log::{decode_body, unpack_stored_with, LogEntry, Op};

use super::schema::Table;
use super::write::WriteTx;
use super::{check_image, Registry, Writer};
use crate::listen::RowChange;
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
    let mut epoch = w.last_entry_epoch;
    for (expected, e) in (first..).zip(&todo) {
        if e.position != expected {
            return Err(Error::Gap {
                expected,
                got: e.position,
            });
        }
        // Epochs never go back along the log: an entry from an older epoch
        // than one already applied comes from a deposed writer.
        if e.epoch < epoch {
            return Err(inapplicable(
                e.position,
                format!(
                    "stale epoch {} after entries of epoch {epoch}: refused",
                    e.epoch
                ),
            ));
        }
        epoch = e.epoch;
    }
    let mut tx = WriteTx::begin(w, reg)?;
    // The master's body is stored as-is; no need to build one.
    tx.logging = false;
    let mut commits = Vec::with_capacity(todo.len());
    let mut pending = Pending::default();
    for entry in todo.iter().copied() {
        apply_one(&mut tx, reg, entry, &mut pending)?;
        if let Some(c) = tx.record_entry(
            entry.position,
            entry.epoch,
            entry.committed_at,
            Some((&entry.body, entry.digest)),
        )? {
            commits.push(c);
        }
    }
    pending.flush(&mut tx, todo.last().map_or(0, |e| e.position))?;
    tx.finish(commits)?;
    Ok(todo.len())
}

/// Inserts waiting to go to the database as multi-row statements, one
/// buffer per table. Rows of consecutive entries accumulate: each entry's
/// digest is checked from the row images in memory, so the database write
/// can wait until a table's buffer is full or a later change must read the
/// tables (an update, a delete, an operation). Keeping a buffer per table
/// matters for entries that insert into several (a device and its tags):
/// one shared buffer would flush at every change of table, in statements
/// of a row or two. Buffers of different tables go out in any order: the
/// references between tables are deferred to commit on both backends.
#[derive(Default)]
struct Pending<'r> {
    tables: Vec<(&'r Table, Vec<Value>)>,
}

impl<'r> Pending<'r> {
    /// Writes every buffered row.
    fn flush(&mut self, tx: &mut WriteTx<'_>, position: u64) -> Result<()> {
        for (t, rows) in &mut self.tables {
            write_rows(tx, t, rows, position)?;
        }
        Ok(())
    }

    fn push(
        &mut self,
        tx: &mut WriteTx<'_>,
        t: &'r Table,
        values: Vec<Value>,
        position: u64,
    ) -> Result<()> {
        let i = match self.tables.iter().position(|(p, _)| std::ptr::eq(*p, t)) {
            Some(i) => i,
            None => {
                self.tables.push((t, Vec::new()));
                self.tables.len() - 1
            }
        };
        let rows = &mut self.tables[i].1;
        rows.extend(values);
        if rows.len() >= t.batch_rows * t.types.len() {
            write_rows(tx, t, rows, position)?;
        }
        Ok(())
    }
}

/// Inserts a table's buffered rows (if any) and empties the buffer.
fn write_rows(tx: &mut WriteTx<'_>, t: &Table, rows: &mut Vec<Value>, position: u64) -> Result<()> {
    if !rows.is_empty() {
        tx.exec_insert_rows(t, rows)
            .map_err(|e| wrap(position, t, e))?;
        rows.clear();
    }
    Ok(())
}

fn wrap(position: u64, t: &Table, e: Error) -> Error {
    match e {
        e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
        other => inapplicable(position, format!("{} insert: {other}", t.name)),
    }
}

fn apply_one<'r>(
    tx: &mut WriteTx<'_>,
    reg: &'r Registry,
    entry: &LogEntry,
    pending: &mut Pending<'r>,
) -> Result<()> {
    // A packed body is unpacked into the writer's kept buffer, given back
    // whatever the outcome.
    let mut scratch = std::mem::take(&mut tx.w.spare.plain);
    let r = apply_body(tx, reg, entry, pending, &mut scratch);
    super::write::keep_at_most(&mut scratch);
    tx.w.spare.plain = scratch;
    r
}

fn apply_body<'r>(
    tx: &mut WriteTx<'_>,
    reg: &'r Registry,
    entry: &LogEntry,
    pending: &mut Pending<'r>,
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let position = entry.position;
    let decode = |source| Error::Decode {
        context: format!("log entry {position}"),
        source,
    };
    let body = unpack_stored_with(&entry.body, scratch).map_err(decode)?;
    let changes = decode_body(body).map_err(decode)?;
    // Record changes an operation produced are not applied: the operation runs instead.
    let mut produced = vec![false; changes.len()];
    for (i, ch) in changes.iter().enumerate() {
        if ch.op == Op::Operation {
            let (name, covers, _) = ch.operation().map_err(|source| Error::Decode {
                context: format!("log entry {position}, operation"),
                source,
            })?;
            let covers = covers as usize;
            if covers > i || changes[i - covers..i].iter().any(|c| c.op == Op::Operation) {
                return Err(inapplicable(
                    position,
                    format!("operation {name} claims {covers} changes it cannot have made"),
                ));
            }
            produced[i - covers..i].iter_mut().for_each(|p| *p = true);
        }
    }
    for (i, ch) in changes.iter().enumerate() {
        if produced[i] {
            continue;
        }
        if ch.op == Op::Operation {
            pending.flush(tx, position)?;
            let (name, _, payload) = ch.operation().map_err(|source| Error::Decode {
                context: format!("log entry {position}, operation"),
                source,
            })?;
            let run = reg
                .operations
                .get(name)
                .ok_or_else(|| Error::UnknownOperation {
                    position,
                    name: name.to_owned(),
                })?
                .clone();
            run(payload, tx).map_err(|e| match e {
                e @ (Error::Locked(_) | Error::Unavailable(_) | Error::DiskFull(_)) => e,
                other => inapplicable(position, format!("operation {name}: {other}")),
            })?;
            continue;
        }
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
                // The payload is the canonical image: hash it as it came.
                tx.delta.toggle(&mut tx.digest, t.name, t.seed, ch.payload);
                tx.bump_identity(t, &values);
                if tx.capture {
                    tx.captured.push(RowChange {
                        table: t.name,
                        op: Op::Insert,
                        old: None,
                        new: Some(values.clone()),
                    });
                }
                pending.push(tx, t, values, position)?;
            }
            Op::Update => {
                pending.flush(tx, position)?;
                let values = check_image(t, ch.payload).map_err(|r| inapplicable(position, r))?;
                tx.update_row(t, values, false).map_err(wrap)?;
            }
            Op::Operation => unreachable!("operations are handled above"),
            Op::Delete => {
                pending.flush(tx, position)?;
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
    if tx.digest != entry.digest {
        return Err(Error::Divergence {
            position,
            local: tx.digest,
            remote: entry.digest,
        });
    }
    Ok(())
}
