use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(crate = "not a path")]
struct Device {
    #[persist(identity)]
    id: i64,
}

fn main() {}
