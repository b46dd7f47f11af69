use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Sensor {
    #[persist(identity)]
    id: i64,
    #[persist(default = f64::NAN)]
    unset: f64,
    #[persist(default = f64::INFINITY)]
    limit: Option<f64>,
    #[persist(default = 1e999)]
    ceiling: f64,
    #[persist(default = -1e400)]
    floor: Option<f64>,
    // Fine: stored as +0.0, like every -0.0.
    #[persist(default = -0.0)]
    zero: f64,
}

fn main() {}
