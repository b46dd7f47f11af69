use persist::PersistentEnum;

#[derive(PersistentEnum)]
enum Mode {
    Plain,
    #[persist(rename = "Plain")]
    Clear,
    #[persist(rename = "tls")]
    Tls,
    #[persist(rename = "tls")]
    StartTls,
    #[persist(rename = "")]
    Empty,
}

fn main() {}
