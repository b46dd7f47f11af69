use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity, min = 1)]
    id: i64,
    #[persist(min = 0)]
    name: String,
    #[persist(min = 1.5)]
    port: i32,
    #[persist(max = 3000000000)]
    small: i32,
    #[persist(min = "0")]
    ratio: f64,
    #[persist(min = 10, max = 1)]
    backwards: i64,
    #[persist(min = 1, max = 10, default = 20)]
    retries: i32,
    #[persist(max = 1i64)]
    suffixed: i64,
}

fn main() {}
