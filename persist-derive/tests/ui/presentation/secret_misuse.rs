use persist::PersistentRecord;

#[derive(PersistentRecord)]
struct Profile {
    #[persist(identity)]
    id: i64,
}

#[derive(PersistentRecord)]
struct Account {
    #[persist(key, secret)]
    login: String,
    #[persist(secret)]
    pin: i32,
    #[persist(secret, descriptive)]
    password: String,
    #[persist(secret, multiline)]
    token: String,
    #[persist(secret, references = Profile)]
    profile: String,
}

fn main() {}
