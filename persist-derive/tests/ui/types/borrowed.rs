use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    name: &'static str,
    raw: &'static [u8],
    other: &'static i64,
}

fn main() {}
