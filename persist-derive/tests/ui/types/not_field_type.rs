use persist::PersistentRecord;

struct Address {
    host: String,
    port: i32,
}

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    address: Address,
    backup: Option<std::collections::HashMap<String, String>>,
}

fn main() {}
