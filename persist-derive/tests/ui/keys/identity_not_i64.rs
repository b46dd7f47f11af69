use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i32,
}

#[derive(PersistentRecord)]
struct Profile {
    #[persist(identity)]
    name: String,
}

fn main() {}
