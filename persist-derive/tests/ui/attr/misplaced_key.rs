use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(unique)]
struct Device {
    #[persist(identity, table = "devices")]
    id: i64,
}

fn main() {}
