use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(title = "")]
struct Device {
    #[persist(identity, label = "")]
    id: i64,
    #[persist(label = "Name\nof the device", help = "   ")]
    name: String,
    #[persist(label = Name, help)]
    host: String,
    #[persist(multiline)]
    port: i32,
    #[persist(multiline = true, label = "Notes", label = "Again")]
    notes: String,
    #[persist(description = "misnamed", password)]
    other: String,
}

fn main() {}
