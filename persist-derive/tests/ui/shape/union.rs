use persist::PersistentRecord;

#[derive(PersistentRecord)]
union Bits {
    int: i64,
    float: f64,
}

fn main() {}
