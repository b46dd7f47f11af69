use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(on_delete = "cascade")]
    parent: i64,
}

fn main() {}
