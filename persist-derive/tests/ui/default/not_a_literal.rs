use persist::PersistentRecord;

const PORT: i32 = 502;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = PORT)]
    port: i32,
    #[persist(default = 500 + 2)]
    backup_port: i32,
}

fn main() {}
