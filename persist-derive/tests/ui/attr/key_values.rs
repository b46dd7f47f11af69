use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity = true)]
    id: i64,
    #[persist(column)]
    name: String,
    #[persist(column = name)]
    host: String,
    #[persist(indexed(yes))]
    port: i32,
}

#[derive(PersistentRecord)]
struct Settings {
    #[persist(key, references = "Device")]
    device: i64,
}

fn main() {}
