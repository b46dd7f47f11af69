use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(table = "a")]
#[persist(table = "b")]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(unique, unique)]
    name: String,
    #[persist(column = "host")]
    #[persist(column = "hostname")]
    host: String,
}

fn main() {}
