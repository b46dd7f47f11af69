use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist]
struct Device {
    #[persist = "identity"]
    id: i64,
}

fn main() {}
