//! The internal model the derives work on: the input's shape checked, attributes
//! parsed, field types classified, each with a reference to the tokens it came from.

use syn::{Data, DeriveInput, Fields, Ident, Type};

use crate::attr::{self, EnumAttrs, FieldAttrs, RecordAttrs, VariantAttrs};
use crate::ctxt::Ctxt;
use crate::ty::{self, FieldTy};

/// A struct with `#[derive(PersistentRecord)]`.
pub(crate) struct Record<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: RecordAttrs,
    pub(crate) fields: Vec<Field<'a>>,
    pub(crate) original: &'a DeriveInput,
}

/// A named field of a record.
pub(crate) struct Field<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: FieldAttrs,
    pub(crate) ty: &'a Type,
    /// `None` when the type is unsupported (the error is already recorded).
    pub(crate) kind: Option<FieldTy<'a>>,
}

/// An enum with `#[derive(PersistentEnum)]`.
pub(crate) struct Enum<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: EnumAttrs,
    pub(crate) variants: Vec<Variant<'a>>,
    pub(crate) original: &'a DeriveInput,
}

/// A variant of a persistent enum.
pub(crate) struct Variant<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) attrs: VariantAttrs,
    pub(crate) original: &'a syn::Variant,
}

const RECORD_SHAPE: &str = "#[derive(PersistentRecord)] needs a struct with named fields";

impl<'a> Record<'a> {
    /// Builds the model; `None` (with errors recorded) when the input is not a
    /// struct with named fields.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::record_attrs(cx, &input.attrs);
        let named = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => named,
                Fields::Unnamed(fields) => {
                    cx.error_spanned_by(
                        fields,
                        format!(
                            "{RECORD_SHAPE}: a column is named after its field\n\
                             help: name the fields, like `struct {} {{ id: i64, .. }}`",
                            input.ident
                        ),
                    );
                    return None;
                }
                Fields::Unit => {
                    cx.error_spanned_by(
                        &input.ident,
                        format!(
                            "{RECORD_SHAPE}: a unit struct has no columns\n\
                             help: add the fields, like `struct {} {{ id: i64, .. }}`",
                            input.ident
                        ),
                    );
                    return None;
                }
            },
            Data::Enum(e) => {
                cx.error_spanned_by(
                    e.enum_token,
                    format!(
                        "{RECORD_SHAPE}\n\
                         help: to store an enum of unit variants in a column, use \
                         `#[derive(PersistentEnum)]`"
                    ),
                );
                return None;
            }
            Data::Union(u) => {
                cx.error_spanned_by(u.union_token, RECORD_SHAPE);
                return None;
            }
        };
        let fields = named
            .named
            .iter()
            .filter_map(|f| {
                // Named fields always have an ident; skip defensively rather than panic.
                let ident = f.ident.as_ref()?;
                let kind = match ty::classify(&f.ty) {
                    Ok(kind) => Some(kind),
                    Err(err) => {
                        cx.syn_error(err);
                        None
                    }
                };
                Some(Field {
                    ident,
                    attrs: attr::field_attrs(cx, &f.attrs),
                    ty: &f.ty,
                    kind,
                })
            })
            .collect();
        Some(Record {
            ident: &input.ident,
            attrs,
            fields,
            original: input,
        })
    }
}

impl<'a> Enum<'a> {
    /// Builds the model; `None` (with errors recorded) when the input is not an enum.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        let attrs = attr::enum_attrs(cx, &input.attrs);
        const SHAPE: &str = "#[derive(PersistentEnum)] needs an enum whose variants carry no data";
        let data = match &input.data {
            Data::Enum(data) => data,
            Data::Struct(s) => {
                cx.error_spanned_by(
                    s.struct_token,
                    format!(
                        "{SHAPE}\nhelp: to store a struct as a table, use \
                         `#[derive(PersistentRecord)]`"
                    ),
                );
                return None;
            }
            Data::Union(u) => {
                cx.error_spanned_by(u.union_token, SHAPE);
                return None;
            }
        };
        let variants = data
            .variants
            .iter()
            .map(|v| Variant {
                ident: &v.ident,
                attrs: attr::variant_attrs(cx, &v.attrs),
                original: v,
            })
            .collect();
        Some(Enum {
            ident: &input.ident,
            attrs,
            variants,
            original: input,
        })
    }
}

impl Field<'_> {
    /// The field's name without `r#`.
    pub(crate) fn name(&self) -> String {
        unraw(self.ident)
    }

    /// The column name: `#[persist(column = "...")]`, else the field name.
    pub(crate) fn column(&self) -> String {
        match &self.attrs.column {
            Some(c) => c.value.value(),
            None => self.name(),
        }
    }

    pub(crate) fn is_key(&self) -> bool {
        self.attrs.identity.is_some() || self.attrs.key.is_some()
    }
}

impl Record<'_> {
    /// The table name: `#[persist(table = "...")]`, else the struct name in snake_case.
    pub(crate) fn table(&self) -> String {
        match &self.attrs.table {
            Some(t) => t.value.value(),
            None => heck::ToSnakeCase::to_snake_case(unraw(self.ident).as_str()),
        }
    }

    /// The index of the key field (the first one, if the checks found several).
    pub(crate) fn key_index(&self) -> Option<usize> {
        self.fields.iter().position(Field::is_key)
    }
}

impl Variant<'_> {
    /// The stored name: `#[persist(rename = "...")]`, else the variant name.
    pub(crate) fn stored_name(&self) -> String {
        match &self.attrs.rename {
            Some(r) => r.value.value(),
            None => unraw(self.ident),
        }
    }
}

pub(crate) fn unraw(ident: &Ident) -> String {
    syn::ext::IdentExt::unraw(ident).to_string()
}
