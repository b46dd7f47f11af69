use persist::PersistentEnum;

#[derive(PersistentEnum)]
enum Mode<T> {
    Plain,
    Other(T),
}

fn main() {}
