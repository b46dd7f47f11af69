use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    port: u32,
    flags: u8,
    big: u64,
    index: usize,
    ratio: f32,
    grade: char,
    huge: i128,
    maybe: Option<u16>,
}

fn main() {}
