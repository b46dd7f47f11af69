use persist::{PersistentEnum, PersistentRecord};

#[derive(PersistentEnum)]
enum Security {
    Plain,
    Tls,
}

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = "Ssl")]
    security: Security,
    #[persist(default = "Tls")]
    fallback: Option<Security>,
}

fn main() {}
