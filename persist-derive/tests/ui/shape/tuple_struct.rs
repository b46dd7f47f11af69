use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device(i64, String);

fn main() {}
