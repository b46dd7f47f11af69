use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity, unique)]
    id: i64,
    #[persist(unique, indexed)]
    name: String,
}

#[derive(PersistentRecord)]
struct Profile {
    #[persist(key, indexed)]
    name: String,
}

fn main() {}
