//! A second sample module: production counters (pieces made per line),
//! changed by a replicated operation.
//!
//! An [`Increment`] is not shipped as the rows it changes but as itself: the
//! master runs it in a transaction, the backup runs the same operation from
//! the log on the same rows and reaches the same digest. It runs beside the
//! alarm module in one gateway, with its own table, to show two modules
//! together.

use std::sync::{Arc, OnceLock};

use persist::module::{Module, ModuleContext, ModuleError};
use persist::prelude::*;
use persist::{ReplicatedOperation, Store, WriteTx};
use serde::{Deserialize, Serialize};

/// One counter.
#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(table = "production_counter", title = "Production counters")]
pub struct Counter {
    /// Assigned by the store.
    #[persist(identity, label = "Id")]
    pub id: i64,
    /// The line it counts (`line-1`).
    #[persist(
        unique,
        descriptive,
        label = "Line",
        help = "The production line counted, like `line-1`."
    )]
    pub name: String,
    /// Pieces so far.
    #[persist(min = 0, label = "Pieces", help = "Pieces counted so far.")]
    pub value: i64,
}

/// Adds `by` to the counter `name`, creating it at zero first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Increment {
    /// The counter.
    pub name: String,
    /// How much to add.
    pub by: i64,
}

impl ReplicatedOperation for Increment {
    const NAME: &'static str = "counters/increment";

    fn execute(&self, tx: &mut WriteTx<'_>) -> persist::Result<()> {
        let existing = tx
            .list::<Counter>()?
            .into_iter()
            .find(|c| c.name == self.name);
        match existing {
            Some(mut c) => {
                c.value = c.value.saturating_add(self.by);
                tx.update(&c)
            }
            None => tx
                .insert(&Counter {
                    id: 0,
                    name: self.name.clone(),
                    value: self.by,
                })
                .map(|_| ()),
        }
    }
}

/// The counter module (a cheap handle: clones share it).
#[derive(Clone)]
pub struct Counters {
    store: Arc<OnceLock<Store>>,
    version: &'static str,
}

impl Default for Counters {
    fn default() -> Self {
        Counters::new()
    }
}

impl Counters {
    /// A module not yet registered on a gateway.
    pub fn new() -> Counters {
        Counters::release(env!("CARGO_PKG_VERSION"))
    }

    /// The module as a later release with the same records announces
    /// itself (a code-only upgrade), for upgrade drills.
    pub fn release(version: &'static str) -> Counters {
        Counters {
            store: Arc::default(),
            version,
        }
    }

    fn store(&self) -> persist::Result<&Store> {
        self.store.get().ok_or_else(|| persist::Error::NotMaster {
            reason: "the counter module is not running on a gateway".into(),
        })
    }

    /// Adds `by` to counter `name` (on the master; a backup refuses with
    /// `Error::NotMaster`).
    pub fn increment(&self, name: &str, by: i64) -> persist::Result<()> {
        self.store()?.run_operation(&Increment {
            name: name.to_owned(),
            by,
        })
    }

    /// The counter's value on this node.
    pub fn value(&self, name: &str) -> persist::Result<Option<i64>> {
        Ok(self
            .store()?
            .list::<Counter>()?
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| c.value))
    }
}

impl Module for Counters {
    fn name(&self) -> &'static str {
        "counters"
    }

    fn version(&self) -> &'static str {
        self.version
    }

    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<Counter>()?;
        ctx.operation::<Increment>()?;
        let _ = self.store.set(ctx.store());
        Ok(())
    }
}
