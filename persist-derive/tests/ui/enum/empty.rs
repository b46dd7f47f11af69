use persist::PersistentEnum;

#[derive(PersistentEnum)]
enum Mode {}

fn main() {}
