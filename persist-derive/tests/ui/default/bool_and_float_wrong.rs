use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Device {
    #[persist(identity)]
    id: i64,
    #[persist(default = 1)]
    enabled: bool,
    #[persist(default = "0.5")]
    scale: f64,
    #[persist(default = 0.5f32)]
    gain: f64,
}

fn main() {}
