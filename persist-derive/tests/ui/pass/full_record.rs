// A full record through the facade: every field type, every attribute, column
// handles, a reference across modules, and a type written by a macro.
use chrono::{DateTime, Utc};
use persist::{PersistentEnum, PersistentRecord};

mod model {
    use persist::PersistentEnum;

    #[derive(PersistentEnum, Debug, Clone, PartialEq)]
    pub enum Security {
        Plain,
        #[persist(rename = "tls")]
        Tls,
    }
}

use model::Security;

#[derive(PersistentRecord, Debug, Clone, PartialEq)]
#[persist(table = "devices", validate = Device::check)]
pub struct Device {
    #[persist(identity)]
    pub id: i64,
    #[persist(unique, column = "device_name")]
    pub name: String,
    #[persist(indexed, default = 502)]
    pub port: i32,
    #[persist(default = -1.5)]
    pub offset: f64,
    #[persist(default = false)]
    pub readonly: bool,
    #[persist(default = b"")]
    pub secret: Vec<u8>,
    pub installed: DateTime<Utc>,
    #[persist(default = "Tls")]
    pub security: model::Security,
    pub fallback: Option<Security>,
    pub r#type: Option<String>,
}

impl Device {
    fn check(&self) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

macro_rules! settings {
    ($key:ty) => {
        #[derive(PersistentRecord)]
        pub(crate) struct DeviceSettings {
            #[persist(key, references = crate::Device, on_delete = "cascade")]
            device: $key,
            poll_ms: Option<$key>,
        }
    };
}

settings!(i64);

// Reaching persist through another path, as a re-exporting SDK would.
mod sdk {
    pub use persist as storage;
}

#[derive(PersistentRecord)]
#[persist(crate = "sdk::storage")]
struct Profile {
    #[persist(key)]
    name: String,
}

#[derive(PersistentEnum)]
#[persist(crate = persist_core)]
enum Parity {
    None,
    Even,
}

fn main() {
    let _gt = Device::columns().port.gt(5);
    let _eq = Device::columns().security.eq(Security::Tls);
    let _null = Device::columns().fallback.is_null();
    let _order = DeviceSettings::columns().poll_ms.desc();
    assert_eq!(Device::meta().columns.len(), 10);
    assert_eq!(Profile::meta().table, "profile");
    assert_eq!(<Parity as persist::PersistentEnum>::VARIANTS, ["None", "Even"]);
    let _ = (Parity::None, Parity::Even);
}
