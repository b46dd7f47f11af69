use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = 0)]
    name: String,
    #[persist(default = "01")]
    secret: Vec<u8>,
}

fn main() {}
