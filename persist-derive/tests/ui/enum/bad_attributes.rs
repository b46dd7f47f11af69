use persist::PersistentEnum;

#[derive(PersistentEnum)]
#[persist(table = "modes")]
enum Mode {
    #[persist(renam = "plain")]
    Plain,
    #[persist(rename = "tls", rename = "TLS")]
    Tls,
    #[persist(rename = tls13)]
    Tls13,
}

fn main() {}
