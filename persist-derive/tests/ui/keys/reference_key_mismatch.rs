use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
}

#[derive(PersistentRecord)]
struct Settings {
    #[persist(key, references = Device)]
    device: i32,
    #[persist(references = Device)]
    backup: Option<String>,
}

fn main() {}
