use persist::PersistentRecord;

#[derive(PersistentRecord)]
enum Mode {
    Plain,
    Tls,
}

fn main() {}
