use chrono::{DateTime, Utc};
use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = 0)]
    installed: DateTime<Utc>,
    #[persist(default = "2024-01-01T00:00:00Z")]
    seen: Option<DateTime<Utc>>,
}

fn main() {}
