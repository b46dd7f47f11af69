use persist::PersistentRecord;

struct Device {
    id: i64,
}

#[derive(PersistentRecord)]
struct Settings {
    #[persist(key, references = Device)]
    device: i64,
}

fn main() {}
