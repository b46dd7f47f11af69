use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(colum = "device_name")]
    name: String,
    // Nothing close to a key: the help shows the most common form.
    #[persist(primary_key)]
    serial: String,
}

fn main() {}
