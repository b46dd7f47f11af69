//! `drill-gateway`: the sample gateway with its counter module at a chosen
//! release, for upgrade drills and the module-mismatch tests.
//!
//! `drill-gateway <config.toml> <counters release>`, where the release is
//! `0.1.0` (as `gateway` runs it), `0.1.1` (a later release with the same
//! records: a code-only upgrade, rolled node by node), or `0.2.0` (a release
//! whose records changed: a counter gained a unit, which the peer refuses by
//! name).

use persist::module::{Module, ModuleContext, ModuleError};
use persist::prelude::*;

/// The counter of release 0.2.0: a unit beside the value.
#[derive(PersistentRecord, Debug, Clone)]
#[persist(table = "production_counter")]
pub struct CounterWithUnit {
    /// Assigned by the store.
    #[persist(identity)]
    pub id: i64,
    /// The line it counts.
    #[persist(unique)]
    pub name: String,
    /// Pieces so far.
    pub value: i64,
    /// What is counted.
    pub unit: Option<String>,
}

/// Release 0.2.0 of the counter module.
struct CountersWithUnits;

impl Module for CountersWithUnits {
    fn name(&self) -> &'static str {
        "counters"
    }
    fn version(&self) -> &'static str {
        "0.2.0"
    }
    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        ctx.record::<CounterWithUnit>()?;
        ctx.operation::<counter_module::Increment>()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, release] = args.as_slice() else {
        eprintln!("usage: drill-gateway <config.toml> <0.1.0 | 0.1.1 | 0.2.0>");
        std::process::exit(2);
    };
    let gateway = persist_gateway::Gateway::from_config_file(config)
        .map(|g| g.module(alarm_module::AlarmModule::new()));
    let gateway = match release.as_str() {
        "0.1.0" => gateway.map(|g| g.module(counter_module::Counters::new())),
        "0.1.1" => gateway.map(|g| g.module(counter_module::Counters::release("0.1.1"))),
        "0.2.0" => gateway.map(|g| g.module(CountersWithUnits)),
        other => {
            eprintln!("drill-gateway: no counters release {other}");
            std::process::exit(2);
        }
    };
    if let Err(e) = gateway.and_then(|g| g.run()) {
        eprintln!("drill-gateway: {e}");
        std::process::exit(1);
    }
}
