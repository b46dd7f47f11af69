//! Replicated operations: the redundancy manager's execute-and-replicate.
//!
//! Some changes are better replicated as the operation that made them than as
//! their row changes (a computed rollover, a batch rename...). A module
//! defines the operation as a serde type with the code that applies it and
//! runs it with [`WriteTx::run_operation`]. On the master it runs inside the
//! write transaction; only if it succeeds does it commit, and its log entry
//! then records the operation after the record changes it made. A backup
//! applying the entry runs the operation in the same place instead of those
//! record changes, so nothing is applied twice, and the entry's digest check
//! proves the operation did the same on both nodes. An operation the backup
//! has not registered makes the entry fail to apply, with an error naming it:
//! it is never skipped.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::log::{encode_operation, Op};

use super::write::WriteTx;

/// An operation replicated by running it on each node (see the module docs).
pub trait ReplicatedOperation: Serialize + DeserializeOwned + Send + 'static {
    /// A stable name that identifies the operation type on both nodes.
    const NAME: &'static str;

    /// Applies the operation in a write transaction. It must be
    /// deterministic given the data: the backup runs it on the same rows and
    /// must reach the same digest.
    fn execute(&self, tx: &mut WriteTx<'_>) -> Result<()>;
}

/// A registered operation, type-erased.
pub(crate) type OpHandler = Arc<dyn Fn(&[u8], &mut WriteTx<'_>) -> Result<()> + Send + Sync>;

pub(crate) fn handler<O: ReplicatedOperation>() -> OpHandler {
    Arc::new(|bytes, tx| {
        let op: O = postcard::from_bytes(bytes).map_err(|e| Error::Inapplicable {
            position: 0,
            reason: format!("operation {} cannot be decoded: {e}", O::NAME),
        })?;
        op.execute(tx)
    })
}

impl WriteTx<'_> {
    /// Runs a replicated operation in this transaction (see the module docs).
    /// The operation type must be registered with
    /// [`Store::register_operation`](super::Store::register_operation).
    pub fn run_operation<O: ReplicatedOperation>(&mut self, op: &O) -> Result<()> {
        if !self.reg.operations.contains_key(O::NAME) {
            return Err(Error::NotRegistered {
                type_name: std::any::type_name::<O>(),
                table: O::NAME,
            });
        }
        if self.in_operation {
            return Err(Error::Database(format!(
                "operation {} run inside another operation",
                O::NAME
            )));
        }
        let before = self.body.len();
        self.in_operation = true;
        let r = op.execute(self);
        self.in_operation = false;
        r?;
        if self.logging {
            let covers = self.body.len() - before;
            let payload = postcard::to_allocvec(op)
                .map_err(|e| Error::Database(format!("encoding operation {}: {e}", O::NAME)))?;
            self.body.push(
                "",
                Op::Operation,
                &encode_operation(O::NAME, covers, &payload),
            );
        }
        Ok(())
    }
}
