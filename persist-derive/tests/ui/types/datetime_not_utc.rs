use chrono::{DateTime, Local};
use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    installed: DateTime<Local>,
}

fn main() {}
