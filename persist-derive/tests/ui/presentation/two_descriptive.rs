use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(descriptive)]
    name: String,
    #[persist(descriptive)]
    host: String,
    #[persist(descriptive)]
    raw: Vec<u8>,
}

fn main() {}
