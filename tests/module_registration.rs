//! Modules on one store: what they declare is namespaced by module, two
//! modules cannot collide silently, every error names its module, and the
//! manifest fingerprints a module's records.

use std::sync::Arc;

use persist::module::{Module, ModuleContext, ModuleError, Modules};
use persist::prelude::*;
use persist::sync::redundancy::NodeRole;
use persist::sync::runtime_state::TypedStateProvider;
use persist::Store;

#[derive(PersistentRecord, Debug, Clone)]
struct Valve {
    #[persist(identity)]
    id: i64,
    name: String,
}

#[derive(PersistentRecord, Debug, Clone)]
#[persist(table = "valve")]
struct OtherValve {
    #[persist(identity)]
    id: i64,
    label: String,
}

#[derive(PersistentRecord, Debug, Clone)]
struct Pipe {
    #[persist(identity)]
    id: i64,
    #[persist(references = Valve)]
    valve_id: i64,
}

#[derive(Clone, Default)]
struct Count(Arc<std::sync::Mutex<u64>>);

impl TypedStateProvider for Count {
    type State = u64;
    type Update = u64;
    fn full_state(&self) -> u64 {
        *self.0.lock().unwrap()
    }
    fn apply_full(&self, s: u64) -> Result<(), String> {
        *self.0.lock().unwrap() = s;
        Ok(())
    }
    fn apply_update(&self, u: u64) -> Result<(), String> {
        *self.0.lock().unwrap() += u;
        Ok(())
    }
}

/// A module declaring what `declare` says.
struct Test {
    name: &'static str,
    version: &'static str,
    declare: fn(&mut ModuleContext) -> Result<(), ModuleError>,
}

impl Module for Test {
    fn name(&self) -> &'static str {
        self.name
    }
    fn version(&self) -> &'static str {
        self.version
    }
    fn register(&self, ctx: &mut ModuleContext) -> Result<(), ModuleError> {
        (self.declare)(ctx)
    }
}

fn module(
    name: &'static str,
    declare: fn(&mut ModuleContext) -> Result<(), ModuleError>,
) -> Arc<dyn Module> {
    Arc::new(Test {
        name,
        version: "1.0.0",
        declare,
    })
}

fn register(modules: Vec<Arc<dyn Module>>) -> Result<Modules, ModuleError> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(dir.path().join("gw-a.db")).unwrap();
    Modules::register(&store, "gw-a", NodeRole::Master, modules)
}

#[test]
fn two_modules_declaring_one_table_are_refused_with_both_names() {
    let e = register(vec![
        module("valves", |c| c.record::<Valve>()),
        module("others", |c| c.record::<OtherValve>()),
    ])
    .err()
    .expect("refused");
    assert_eq!(e.module, "others");
    assert!(
        e.to_string()
            .contains("module `others`: table `valve` (record OtherValve) is already declared by module `valves`"),
        "{e}"
    );
}

#[test]
fn a_module_may_reference_another_modules_table() {
    let m = register(vec![
        module("valves", |c| c.record::<Valve>()),
        module("pipes", |c| c.record::<Pipe>()),
    ])
    .unwrap();
    assert_eq!(m.manifests().len(), 2);
}

#[test]
fn two_modules_of_one_name_are_refused() {
    let e = register(vec![
        module("valves", |_| Ok(())),
        module("valves", |_| Ok(())),
    ])
    .err()
    .expect("refused");
    assert_eq!(e.to_string(), "module `valves`: two modules of this name");
}

#[test]
fn runtime_state_ids_are_namespaced_by_module() {
    let m = register(vec![
        module("valves", |c| {
            c.runtime_state("count", Count::default()).map(|_| ())
        }),
        module("pipes", |c| {
            c.runtime_state("count", Count::default()).map(|_| ())
        }),
    ])
    .unwrap();
    let ids = m.runtime().ids();
    assert_eq!(ids, ["pipes/count", "valves/count"]);
}

#[test]
fn a_module_error_carries_the_module_name() {
    let e = register(vec![module("valves", |c| {
        c.runtime_state("bad/id", Count::default()).map(|_| ())
    })])
    .err()
    .expect("refused");
    assert!(
        e.to_string()
            .starts_with("module `valves`: runtime state id"),
        "{e}"
    );
    let e = register(vec![module("", |_| Ok(()))])
        .err()
        .expect("refused");
    assert!(e.problem.contains("non-empty"), "{e}");
}

#[test]
fn the_manifest_changes_with_the_records_not_with_the_version() {
    let fingerprint =
        |version: &'static str, declare: fn(&mut ModuleContext) -> Result<(), ModuleError>| {
            let m = register(vec![Arc::new(Test {
                name: "valves",
                version,
                declare,
            })])
            .unwrap();
            m.manifests()[0].clone()
        };
    let v1 = fingerprint("1.0.0", |c| c.record::<Valve>());
    let v11 = fingerprint("1.1.0", |c| c.record::<Valve>());
    let other = fingerprint("1.0.0", |c| c.record::<OtherValve>());
    assert_eq!(v1.version, "1.0.0");
    assert_eq!(v11.version, "1.1.0");
    assert_eq!(v1.schema, v11.schema, "same records, same fingerprint");
    assert_ne!(v1.schema, other.schema, "other columns, other fingerprint");
}
