//! Derive macros of persist: `#[derive(PersistentRecord)]` turns a struct into a
//! table, `#[derive(PersistentEnum)]` stores an enum by variant name.
//!
//! Use them through the `persist` crate, which re-exports both next to the traits
//! they implement: `use persist::{PersistentEnum, PersistentRecord};`.

mod ast;
mod attr;
mod check;
mod ctxt;
mod enumeration;
mod record;
mod symbol;
mod ty;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Stores a struct with named fields as a table: one row per value, one column per field.
///
/// Implements `persist::PersistentRecord`: the table metadata (`meta()`), the row
/// codec (`to_row`, `from_row`), the key (`key()`), the validator (`validate()`),
/// and typed column handles for filters and ordering (`columns()`, a generated
/// `<Struct>Columns` struct with one `Column` per field).
///
/// ```
/// use persist::{PersistentEnum, PersistentRecord};
///
/// #[derive(PersistentEnum)]
/// enum Security {
///     Plain,
///     Tls,
/// }
///
/// #[derive(PersistentRecord)]
/// #[persist(table = "devices", validate = check_device)]
/// struct Device {
///     #[persist(identity)]
///     id: i64,
///     #[persist(unique)]
///     name: String,
///     #[persist(indexed, default = 502)]
///     port: i32,
///     #[persist(default = "Plain")]
///     security: Security,
///     comment: Option<String>,
/// }
///
/// fn check_device(d: &Device) -> Result<(), String> {
///     if d.port > 0 { Ok(()) } else { Err(format!("port {} is not positive", d.port)) }
/// }
///
/// // The settings of one device, keyed by the device's id.
/// #[derive(PersistentRecord)]
/// struct DeviceSettings {
///     #[persist(key, references = Device, on_delete = "cascade")]
///     device: i64,
///     #[persist(column = "poll_interval_ms")]
///     poll_ms: Option<i32>,
/// }
///
/// assert_eq!(Device::meta().table, "devices");
/// assert_eq!(DeviceSettings::meta().table, "device_settings");
/// let _privileged = Device::columns().port.lt(1024);
/// ```
///
/// # Field types
///
/// | Rust type | Column |
/// |---|---|
/// | `i64` | big integer |
/// | `i32` | integer |
/// | `f64` | double (bit for bit, but -0.0 is stored as 0.0 and NaN is refused) |
/// | `bool` | boolean |
/// | `String` | text |
/// | `Vec<u8>` | blob |
/// | `chrono::DateTime<Utc>` (also written `DateTime<Utc>`) | timestamp (microseconds, UTC) |
/// | an enum with `#[derive(PersistentEnum)]` | text (the variant's name) |
/// | `Option<T>` of any of these | the same, nullable |
///
/// Other types are a compile error that says what to use instead (`u32` → `i64`,
/// `&str` → `String`, ...).
///
/// # Attributes
///
/// All attributes live in the `persist` namespace; several keys can share one
/// attribute (`#[persist(key, references = Device)]`) and each key may appear
/// once per item.
///
/// ## Container attributes
///
/// - `#[persist(table = "name")]`: the table name. Default: the struct name in
///   snake_case (`DeviceSettings` → `device_settings`). Table and column names
///   are ASCII letters, digits and `_`, at most 63 characters.
/// - `#[persist(validate = path::to_fn)]`: a `fn(&Self) -> Result<(), E>` with
///   `E: Display`, run by `validate()` before every write; its error becomes the
///   message of `Error::Validation`.
/// - `#[persist(crate = "path")]`: the path the generated code uses to reach
///   persist. Default: `::persist`. Set it when persist is re-exported under
///   another name (`crate = "my_sdk::persist"`) or to use `persist_core` directly.
/// - `#[persist(title = "Devices")]`: what the configuration pages and the API
///   document call the record type (`RecordMeta::title`).
///
/// ## Field attributes
///
/// Every record has exactly one primary key, marked with `identity` or `key`.
///
/// - `#[persist(identity)]`: the primary key, an `i64` the store assigns on
///   insert (the value in the struct is ignored then).
/// - `#[persist(key)]`: the primary key, supplied by the module: any supported
///   non-`Option` type, e.g. the id of the profile a settings row belongs to.
/// - `#[persist(column = "name")]`: the column name. Default: the field name.
/// - `#[persist(unique)]`: a unique index on the column.
/// - `#[persist(indexed)]`: a (non-unique) index on the column.
/// - `#[persist(default = <literal>)]`: the value given to existing rows when the
///   column is added to a table. An integer for `i64`/`i32` (`default = -1`), a
///   finite number for `f64` (NaN and infinities are refused; `-0.0` is stored
///   as `0.0`, like every -0.0), `true`/`false` for `bool`, a string for `String`, a byte
///   string for `Vec<u8>` (`default = b"\x00"`), the variant's name as a string
///   for an enum (`default = "Tls"`). For `Option<T>` it is the value of `T`
///   inside `Some`. `DateTime<Utc>` fields take no default.
/// - `#[persist(references = OtherRecord)]`: a foreign key to `OtherRecord`'s
///   key; the field's type (inside `Option`, for an optional reference) must be
///   `OtherRecord`'s key type.
/// - `#[persist(on_delete = "restrict")]` or `#[persist(on_delete = "cascade")]`:
///   with `references`, what deleting the referenced record does: refuse while
///   this row references it (`restrict`, the default), or delete this row too
///   (`cascade`).
///
/// ## Presentation attributes
///
/// What the gateway's configuration pages and REST API show (`ColumnMeta::ui`).
/// They are not schema: adding or changing them never changes the table or
/// the schema fingerprint, except `min` / `max`, which also validate.
///
/// - `#[persist(label = "Port")]`: the field's label (one line, not empty).
/// - `#[persist(help = "...")]`: a sentence of help beside the input.
/// - `#[persist(descriptive)]`: this field names a row where rows are offered
///   as choices (a reference's select). At most one per record; text or an
///   integer; not `secret`.
/// - `#[persist(secret)]`: never sent back to a browser or an API client (a
///   password). `String` or `Vec<u8>`; not the key, a reference, or
///   `multiline`.
/// - `#[persist(multiline)]`: text edited over several lines (`String`).
/// - `#[persist(min = 1, max = 65535)]`: bounds of a number field (a literal of
///   the field's kind, `min <= max`, the default inside them). `validate()`
///   checks them before the record's own validator, with a message naming
///   the label (`Port must be at least 1, not 0`).
#[proc_macro_derive(PersistentRecord, attributes(persist))]
pub fn derive_persistent_record(input: TokenStream) -> TokenStream {
    derive_persistent_record_inner(input.into()).into()
}

/// Stores an enum whose variants carry no data in a text column, by variant name.
///
/// Implements `persist::PersistentEnum` (the stored names) and
/// `persist::FieldType`, so the enum can be a field of a record, optionally
/// inside `Option`.
///
/// ```
/// use persist::{PersistentEnum, Value};
/// use persist::FieldType as _;
///
/// #[derive(PersistentEnum)]
/// enum Parity {
///     None,
///     Even,
///     #[persist(rename = "odd")]
///     Odd,
/// }
///
/// assert_eq!(Parity::VARIANTS, ["None", "Even", "odd"]);
/// assert_eq!(Parity::Odd.to_value(), Value::Text("odd".into()));
/// ```
///
/// # Attributes
///
/// ## Container attributes
///
/// - `#[persist(crate = "path")]`: the path the generated code uses to reach
///   persist. Default: `::persist`.
///
/// ## Variant attributes
///
/// - `#[persist(rename = "stored name")]`: store the variant under this name
///   instead of its Rust name. Stored names must be unique. Renaming a variant
///   in Rust without `rename` changes what is stored, so existing rows no
///   longer decode.
#[proc_macro_derive(PersistentEnum, attributes(persist))]
pub fn derive_persistent_enum(input: TokenStream) -> TokenStream {
    derive_persistent_enum_inner(input.into()).into()
}

/// `#[derive(PersistentRecord)]` on `proc_macro2` tokens, for unit tests.
#[doc(hidden)]
pub(crate) fn derive_persistent_record_inner(
    input: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    syn::parse2(input)
        .and_then(record::derive)
        .unwrap_or_else(syn::Error::into_compile_error)
}

/// `#[derive(PersistentEnum)]` on `proc_macro2` tokens, for unit tests.
#[doc(hidden)]
pub(crate) fn derive_persistent_enum_inner(
    input: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    syn::parse2(input)
        .and_then(enumeration::derive)
        .unwrap_or_else(syn::Error::into_compile_error)
}
