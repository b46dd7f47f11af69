use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(tabel = "devices")]
struct Device {
    #[persist(identity)]
    id: i64,
}

fn main() {}
