use persist::PersistentEnum;

#[derive(PersistentEnum)]
struct Mode {
    tls: bool,
}

fn main() {}
