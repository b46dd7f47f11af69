//! Which Rust field types map onto which columns.
//!
//! Types the macro knows are wrong get an error here, with what to use instead.
//! Any other path type is assumed to be a `#[derive(PersistentEnum)]` enum; the
//! generated code asserts that it implements `FieldType`, so a wrong guess is
//! still a compile error on the type.

use syn::{GenericArgument, PathArguments, Type, TypePath};

/// The non-nullable part of a field type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    I64,
    I32,
    F64,
    Bool,
    String,
    Bytes,
    DateTime,
    /// Any other path: expected to be a `#[derive(PersistentEnum)]` enum.
    Enum,
}

impl Scalar {
    /// How the type is named in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scalar::I64 => "i64",
            Scalar::I32 => "i32",
            Scalar::F64 => "f64",
            Scalar::Bool => "bool",
            Scalar::String => "String",
            Scalar::Bytes => "Vec<u8>",
            Scalar::DateTime => "DateTime<Utc>",
            Scalar::Enum => "enum",
        }
    }
}

/// A field type the derive accepts.
pub(crate) struct FieldTy<'a> {
    pub(crate) scalar: Scalar,
    /// The field is `Option<T>`: a nullable column.
    pub(crate) nullable: bool,
    /// `T` for `Option<T>`, else the field type itself.
    pub(crate) inner: &'a Type,
}

/// Classifies a field type, or explains why it cannot be a column.
pub(crate) fn classify(ty: &Type) -> syn::Result<FieldTy<'_>> {
    let inner = ungroup(ty);
    if let Some(arg) = generic_arg(inner, "Option") {
        let arg = ungroup(arg);
        if generic_arg(arg, "Option").is_some() {
            return Err(syn::Error::new_spanned(
                ty,
                "`Option<Option<T>>` is not supported: a column has a single NULL; use `Option<T>`",
            ));
        }
        let scalar = scalar(arg)?;
        return Ok(FieldTy {
            scalar,
            nullable: true,
            inner: arg,
        });
    }
    Ok(FieldTy {
        scalar: scalar(inner)?,
        nullable: false,
        inner,
    })
}

/// Looks through the invisible groups `macro_rules!` wraps around `$t:ty`, and parentheses.
fn ungroup(mut ty: &Type) -> &Type {
    loop {
        match ty {
            Type::Group(g) => ty = &g.elem,
            Type::Paren(p) => ty = &p.elem,
            _ => return ty,
        }
    }
}

/// The last segment of a plain path type (no `<T as Trait>::` prefix).
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(TypePath { qself: None, path }) => path.segments.last(),
        _ => None,
    }
}

/// `T` when `ty` is `name<T>` (with any path prefix).
fn generic_arg<'a>(ty: &'a Type, name: &str) -> Option<&'a Type> {
    let seg = last_segment(ty)?;
    if seg.ident != name {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return None;
    };
    if args.args.len() != 1 {
        return None;
    }
    match args.args.first()? {
        GenericArgument::Type(t) => Some(ungroup(t)),
        _ => None,
    }
}

fn is_plain(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == name && s.arguments.is_none())
}

fn scalar(ty: &Type) -> syn::Result<Scalar> {
    let unsupported = |msg: String| Err(syn::Error::new_spanned(ty, msg));
    match ty {
        Type::Path(TypePath { qself: None, path }) => {
            let Some(seg) = path.segments.last() else {
                return Ok(Scalar::Enum);
            };
            let name = seg.ident.to_string();
            if seg.arguments.is_none() {
                let known = match name.as_str() {
                    "i64" => Some(Scalar::I64),
                    "i32" => Some(Scalar::I32),
                    "f64" => Some(Scalar::F64),
                    "bool" => Some(Scalar::Bool),
                    "String" => Some(Scalar::String),
                    _ => None,
                };
                if let Some(known) = known {
                    return Ok(known);
                }
                if path.segments.len() == 1 {
                    if let Some(instead) = primitive_replacement(&name) {
                        return unsupported(format!("`{name}` is not supported: {instead}"));
                    }
                }
            }
            if let Some(elem) = generic_arg(ty, "Vec") {
                return if is_plain(elem, "u8") {
                    Ok(Scalar::Bytes)
                } else {
                    unsupported(
                        "`Vec<T>` is only supported as `Vec<u8>` (a blob): store a list as \
                         records of their own that reference this one"
                            .into(),
                    )
                };
            }
            if let Some(tz) = generic_arg(ty, "DateTime") {
                return if is_plain(tz, "Utc") {
                    Ok(Scalar::DateTime)
                } else {
                    unsupported(
                        "only `DateTime<Utc>` is supported: store the instant in UTC \
                         (`dt.with_timezone(&Utc)`)"
                            .into(),
                    )
                };
            }
            Ok(Scalar::Enum)
        }
        // Anything behind `<T as Trait>::` cannot be checked here; the FieldType
        // assertion decides.
        Type::Path(_) => Ok(Scalar::Enum),
        Type::Reference(r) => {
            let instead = if is_plain(&r.elem, "str") {
                "use `String`"
            } else if matches!(&*r.elem, Type::Slice(s) if is_plain(&s.elem, "u8")) {
                "use `Vec<u8>`"
            } else {
                "use an owned type"
            };
            unsupported(format!(
                "references are not supported: a record owns its data; {instead}"
            ))
        }
        Type::Tuple(t) if t.elems.is_empty() => {
            unsupported("`()` is not supported: a column must hold a value".into())
        }
        Type::Tuple(_) => {
            unsupported("tuples are not supported: give each element a field of its own".into())
        }
        Type::Array(_) => unsupported(
            "arrays are not supported: use `Vec<u8>` for bytes, or one field per element".into(),
        ),
        Type::Slice(_) => unsupported("slices are not supported: use `Vec<u8>` for bytes".into()),
        _ => unsupported(format!(
            "this type is not supported as a field of a persistent record; {SUPPORTED}"
        )),
    }
}

pub(crate) const SUPPORTED: &str = "supported: i64, i32, f64, bool, String, Vec<u8>, \
     DateTime<Utc>, an enum with #[derive(PersistentEnum)], or Option<T> of one of these";

/// What to write instead of a primitive the store has no column type for.
fn primitive_replacement(name: &str) -> Option<&'static str> {
    Some(match name {
        "u8" | "u16" | "i8" | "i16" => "use `i32`",
        "u32" => "use `i64` (or `i32` if the values fit)",
        "u64" | "usize" => "use `i64` (values above `i64::MAX` cannot be stored)",
        "isize" => "use `i64`",
        "i128" | "u128" => "use `i64`, or `String`/`Vec<u8>` for wider values",
        "f32" => "use `f64`",
        "char" => "use `String`",
        "str" => "use `String`",
        _ => return None,
    })
}
