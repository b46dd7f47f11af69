use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = "502")]
    port: i32,
    #[persist(default = 1.5)]
    retries: Option<i64>,
    #[persist(default = 3_000_000_000)]
    timeout_ms: i32,
    #[persist(default = 5u8)]
    priority: i32,
}

fn main() {}
