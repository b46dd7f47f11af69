use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(key)]
    name: String,
}

#[derive(PersistentRecord)]
struct Route {
    #[persist(identity, key)]
    id: i64,
}

fn main() {}
