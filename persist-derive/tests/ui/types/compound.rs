use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    pair: (i32, i32),
    nothing: (),
    mac: [u8; 6],
    tags: Vec<String>,
    callback: fn(),
}

fn main() {}
