use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    id: i64,
    name: String,
}

fn main() {}
