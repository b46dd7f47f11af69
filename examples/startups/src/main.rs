//! A gateway with one module of one record and one listener: the README's
//! "Write a module".
use std::sync::OnceLock;

use persist::chrono::{DateTime, Utc};
use persist::module::{Module, ModuleContext, ModuleError};
use persist::prelude::*;
use persist::sync::redundancy::{ActivityLevel, NodeRole};
use persist::Store;

/// A time the pair's master turned active: a replicated record.
#[derive(PersistentRecord, Debug, Clone)]
pub struct Startup {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
}

#[derive(Default)]
struct Startups {
    store: OnceLock<Store>,
    role: OnceLock<NodeRole>,
}

impl Module for Startups {
    fn name(&self) -> &'static str {
        "startups"
    }

    fn version(&self) -> &'static str {
        "1.0.0"
    }

    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<Startup>()?;
        // The listener: each node prints what it stores; on the backup,
        // that is what the master wrote.
        let mut events = ctx.subscribe::<Startup>()?;
        let node = ctx.node_id().to_owned();
        std::thread::spawn(move || {
            while let Ok(event) = events.recv() {
                println!("{node} stored: {event:?}");
            }
        });
        let _ = self.store.set(ctx.store());
        let _ = self.role.set(ctx.role());
        Ok(())
    }

    fn activity(&self, level: ActivityLevel) {
        // Records are written on the master; the backup gets them replicated.
        if level == ActivityLevel::Active && self.role.get() == Some(&NodeRole::Master) {
            if let Some(store) = self.store.get() {
                let _ = store.insert(&Startup {
                    id: 0,
                    at: Utc::now(),
                });
            }
        }
    }
}

fn main() {
    persist_gateway::main(|gateway| gateway.module(Startups::default()))
}
