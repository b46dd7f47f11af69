use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(colum = "device_name")]
    name: String,
    // Names other derive crates use: the help names the key meant here.
    #[persist(primary_key)]
    serial: String,
    #[persist(rename = "hostname")]
    host: String,
    #[persist(index)]
    port: i32,
    // Nothing close to a key: the help shows the most common form.
    #[persist(whatever)]
    other: String,
}

fn main() {}
