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
    #[persist(default = Tls)]
    security: Security,
    #[persist(default = 1)]
    fallback: Security,
    #[persist(default = "not a variant")]
    other: Security,
}

fn main() {}
