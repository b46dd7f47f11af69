use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: Option<i64>,
}

#[derive(PersistentRecord)]
struct Profile {
    #[persist(key)]
    name: Option<String>,
}

fn main() {}
