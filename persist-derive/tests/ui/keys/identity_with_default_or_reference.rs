use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
}

#[derive(PersistentRecord)]
struct Settings {
    #[persist(identity, default = 1, references = Device)]
    id: i64,
}

fn main() {}
