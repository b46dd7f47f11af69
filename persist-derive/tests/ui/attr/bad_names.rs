use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(table = "device list")]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(column = "1st")]
    first: String,
    größe: i32,
}

#[derive(PersistentRecord)]
struct Route {
    #[persist(identity)]
    id: i64,
    host: String,
    #[persist(column = "host")]
    hostname: String,
}

fn main() {}
