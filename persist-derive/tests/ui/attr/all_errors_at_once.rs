// Every bad attribute of a type is reported in the same compile.
use persist::PersistentRecord;

#[derive(PersistentRecord)]
#[persist(tabel = "x", validate)]
struct Device {
    #[persist(identity, identity)]
    id: i64,
    #[persist(colum = "n", uniqe)]
    name: String,
    #[persist(on_delete = "cascade")]
    port: u16,
}

fn main() {}
