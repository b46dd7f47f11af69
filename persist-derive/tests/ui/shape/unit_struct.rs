use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device;

fn main() {}
