use persist::PersistentEnum;

#[derive(PersistentEnum)]
enum Mode {
    Plain,
    Tls(String),
    Custom { port: i32 },
}

fn main() {}
