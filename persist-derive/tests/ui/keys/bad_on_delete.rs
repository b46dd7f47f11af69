use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
}

#[derive(PersistentRecord)]
struct Settings {
    #[persist(key, references = Device, on_delete = "set_null")]
    device: i64,
    #[persist(references = Device, on_delete = cascade)]
    backup: Option<i64>,
}

fn main() {}
