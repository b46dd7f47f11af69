//! Expansion snapshots (diesel_derives `src/tests/mod.rs`): the generated code of
//! the main shapes, formatted, so a change in the output shows up in review.

use quote::quote;

use crate::{derive_persistent_enum_inner, derive_persistent_record_inner};

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        // Not a file (an error): show the raw tokens so the snapshot says why.
        Err(_) => tokens.to_string(),
    }
}

macro_rules! expand_record {
    ($($input:tt)*) => {
        pretty(derive_persistent_record_inner(quote!($($input)*)))
    };
}

macro_rules! expand_enum {
    ($($input:tt)*) => {
        pretty(derive_persistent_enum_inner(quote!($($input)*)))
    };
}

#[test]
fn identity_record_with_unique_indexed_default() {
    insta::assert_snapshot!(expand_record! {
        pub struct Device {
            #[persist(identity)]
            pub id: i64,
            #[persist(unique)]
            pub name: String,
            #[persist(indexed, default = 502)]
            pub port: i32,
            #[persist(default = -1)]
            pub retries: i64,
        }
    });
}

#[test]
fn explicit_key_with_references_and_cascade() {
    insta::assert_snapshot!(expand_record! {
        pub(crate) struct DeviceSettings {
            #[persist(key, references = Device, on_delete = "cascade")]
            device: i64,
            #[persist(references = crate::model::Profile, on_delete = "restrict")]
            profile: Option<i32>,
            #[persist(references = Device)]
            backup: Option<i64>,
        }
    });
}

#[test]
fn every_field_type() {
    insta::assert_snapshot!(expand_record! {
        struct Everything {
            #[persist(identity)]
            id: i64,
            small: i32,
            #[persist(default = 2)]
            ratio: f64,
            #[persist(default = -0.5)]
            offset: f64,
            #[persist(default = false)]
            flag: bool,
            #[persist(default = "hello")]
            text: String,
            #[persist(default = b"\x00\x01")]
            bytes: Vec<u8>,
            at: chrono::DateTime<chrono::Utc>,
            seen: DateTime<Utc>,
            #[persist(default = "Tls")]
            mode: Mode,
            maybe_int: Option<i32>,
            #[persist(default = "x")]
            maybe_text: Option<String>,
            #[persist(default = "Plain")]
            maybe_mode: Option<Mode>,
            maybe_at: Option<DateTime<Utc>>,
        }
    });
}

#[test]
fn custom_names_validate_and_crate() {
    insta::assert_snapshot!(expand_record! {
        #[persist(table = "gateway_routes", validate = Route::check, crate = "persist_core")]
        pub struct Route {
            #[persist(key, column = "route_name")]
            pub r#name: String,
            #[persist(column = "target_host", unique)]
            pub host: String,
        }
    });
}

#[test]
fn presentation_and_bounds() {
    insta::assert_snapshot!(expand_record! {
        #[persist(title = "Devices", validate = check)]
        pub struct Device {
            #[persist(identity, label = "Id")]
            pub id: i64,
            #[persist(unique, descriptive, label = "Name", help = "A unique name.")]
            pub name: String,
            #[persist(secret, label = "Password")]
            pub password: Option<String>,
            #[persist(multiline)]
            pub notes: String,
            #[persist(min = 1, max = 65535, default = 502, label = "Port")]
            pub port: i32,
            #[persist(min = -0.5, max = 2)]
            pub ratio: Option<f64>,
        }
    });
}

#[test]
fn enum_with_rename() {
    insta::assert_snapshot!(expand_enum! {
        pub enum Security {
            Plain,
            #[persist(rename = "tls")]
            Tls,
            StartTls = 7,
        }
    });
}

#[test]
fn enum_with_crate_path() {
    insta::assert_snapshot!(expand_enum! {
        #[persist(crate = my_sdk::persist)]
        enum Parity {
            None,
            Even,
        }
    });
}

#[test]
fn errors_are_all_reported_together() {
    // One compile must show every bad attribute, not just the first.
    let out = derive_persistent_record_inner(quote! {
        #[persist(tabel = "x")]
        struct Bad {
            #[persist(colum = "a", identity)]
            id: i64,
            #[persist(unique, unique)]
            b: u32,
        }
    })
    .to_string();
    assert_eq!(out.matches("compile_error").count(), 4, "{out}");
    assert!(out.contains("unknown persist attribute `tabel`"), "{out}");
    assert!(out.contains("unknown persist attribute `colum`"), "{out}");
    assert!(
        out.contains("duplicate persist attribute `unique`"),
        "{out}"
    );
    assert!(out.contains("`u32` is not supported"), "{out}");
}
