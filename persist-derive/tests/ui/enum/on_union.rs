use persist::PersistentEnum;

#[derive(PersistentEnum)]
union Mode {
    a: i64,
}

fn main() {}
