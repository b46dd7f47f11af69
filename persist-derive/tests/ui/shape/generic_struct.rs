use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device<T> {
    #[persist(identity)]
    id: i64,
    value: T,
}

#[derive(PersistentRecord)]
struct Named<'a> {
    #[persist(identity)]
    id: i64,
    name: &'a str,
}

fn main() {}
