//! Rules that span several attributes, fields or the type as a whole. They run on
//! the parsed model, before any code is generated.

use std::collections::HashMap;

use quote::ToTokens;
use syn::{Expr, ExprLit, ExprUnary, Generics, Lit, UnOp};

use crate::ast::{Enum, Field, Record};
use crate::ctxt::Ctxt;
use crate::ty::{FieldTy, Scalar};

pub(crate) fn record(cx: &Ctxt, r: &Record<'_>) {
    no_generics(cx, &r.original.generics, "PersistentRecord");
    key(cx, r);
    for f in &r.fields {
        field(cx, f);
    }
    names(cx, r);
    presentation(cx, r);
}

pub(crate) fn enumeration(cx: &Ctxt, e: &Enum<'_>) {
    no_generics(cx, &e.original.generics, "PersistentEnum");
    if e.variants.is_empty() {
        cx.error_spanned_by(
            e.ident,
            "#[derive(PersistentEnum)] needs at least one variant: a column of an empty \
             enum could hold no value",
        );
    }
    let mut seen: HashMap<String, &syn::Ident> = HashMap::new();
    for v in &e.variants {
        if !v.original.fields.is_empty() {
            cx.error_spanned_by(
                &v.original.fields,
                format!(
                    "variant `{}` carries data, but #[derive(PersistentEnum)] stores only \
                     the variant's name\nhelp: remove the fields, or store them in a record",
                    v.ident
                ),
            );
        }
        let name = v.stored_name();
        if let Some(r) = &v.attrs.rename {
            if name.is_empty() {
                cx.error_spanned_by(&r.value, "the stored name of a variant cannot be empty");
                continue;
            }
        }
        if let Some(first) = seen.get(&name) {
            let at: &dyn ToTokens = match &v.attrs.rename {
                Some(r) => &r.value,
                None => v.ident,
            };
            cx.error_spanned_by(
                at,
                format!(
                    "duplicate stored name `{name}`: variant `{first}` is already stored \
                     under it\nhelp: give one of them another name with \
                     `#[persist(rename = \"...\")]`"
                ),
            );
        } else {
            seen.insert(name, v.ident);
        }
    }
}

fn no_generics(cx: &Ctxt, generics: &Generics, derive: &str) {
    if !generics.params.is_empty() {
        let help = if derive == "PersistentEnum" {
            "an enum stored by variant name has no parameters: remove them"
        } else if generics.lifetimes().next().is_some() {
            "a record owns its data: use owned types, like `String` instead of `&str`"
        } else {
            "use concrete field types"
        };
        cx.error_spanned_by(
            generics,
            format!(
                "#[derive({derive})] does not support generic parameters: the type maps \
                 to one fixed column layout\nhelp: {help}"
            ),
        );
    } else if let Some(w) = &generics.where_clause {
        cx.error_spanned_by(
            w,
            format!("#[derive({derive})] does not support a `where` clause"),
        );
    }
}

/// Exactly one field is the primary key.
fn key(cx: &Ctxt, r: &Record<'_>) {
    let mut first: Option<&Field<'_>> = None;
    for f in &r.fields {
        if let (Some(_), Some(key)) = (&f.attrs.identity, &f.attrs.key) {
            cx.error_spanned_by(
                &key.key,
                "`identity` already makes this field the key: remove `key`",
            );
        }
        let Some(keyword) = f.attrs.identity.as_ref().or(f.attrs.key.as_ref()) else {
            continue;
        };
        match first {
            None => first = Some(f),
            Some(prev) => cx.error_spanned_by(
                &keyword.key,
                format!(
                    "a record has exactly one primary key, and field `{}` already is it \
                     (composite keys are not supported)\nhelp: mark this field \
                     `#[persist(unique)]` if its values must be unique",
                    prev.name()
                ),
            ),
        }
    }
    if first.is_none() {
        cx.error_spanned_by(
            r.ident,
            "a record needs a primary key: mark an `i64` field `#[persist(identity)]` for a \
             store-assigned id, or a field `#[persist(key)]`",
        );
    }
}

fn field(cx: &Ctxt, f: &Field<'_>) {
    let a = &f.attrs;
    if let Some(kind) = &f.kind {
        if f.is_key() && kind.nullable {
            let inner = kind.inner;
            cx.error_spanned_by(
                f.ty,
                format!(
                    "the key cannot be an `Option`: a primary key is never NULL\n\
                     help: use `{}`",
                    inner.to_token_stream().to_string().replace(' ', "")
                ),
            );
        } else if a.identity.is_some() && kind.scalar != Scalar::I64 {
            let ty = f.ty.to_token_stream().to_string().replace(' ', "");
            cx.error_spanned_by(
                f.ty,
                format!(
                    "an `identity` key must be `i64`: the store assigns 64-bit ids; found \
                     `{ty}`\nhelp: to keep `{ty}`, mark the field `#[persist(key)]` and \
                     supply the key yourself"
                ),
            );
        }
    }
    if let (Some(on_delete), None) = (&a.on_delete, &a.references) {
        cx.error_spanned_by(
            &on_delete.key,
            "`on_delete` only applies to a reference\nhelp: the correct format looks like \
             `#[persist(references = OtherRecord, on_delete = \"cascade\")]`",
        );
    }
    if f.is_key() {
        if let Some(unique) = &a.unique {
            cx.error_spanned_by(&unique.key, "the key is already unique: remove `unique`");
        }
        if let Some(indexed) = &a.indexed {
            cx.error_spanned_by(&indexed.key, "the key is already indexed: remove `indexed`");
        }
    } else if let (Some(_), Some(indexed)) = (&a.unique, &a.indexed) {
        cx.error_spanned_by(
            &indexed.key,
            "`unique` already indexes the column: remove `indexed`",
        );
    }
    if a.identity.is_some() {
        if let Some(default) = &a.default {
            cx.error_spanned_by(
                &default.key,
                "an `identity` key is assigned by the store and cannot have a default",
            );
        }
        if let Some(references) = &a.references {
            cx.error_spanned_by(
                &references.key,
                "an `identity` key is assigned by the store and cannot reference another \
                 record\nhelp: use `#[persist(key, references = ...)]` to key this record \
                 by the referenced record's key",
            );
        }
    } else if let (Some(default), Some(kind)) = (&a.default, &f.kind) {
        default_value(cx, f, kind, &default.value);
    }
}

/// A literal, possibly negated: what `default = ...` accepts.
pub(crate) fn literal(expr: &Expr) -> Option<(bool, &Lit)> {
    match expr {
        Expr::Lit(ExprLit { lit, attrs }) if attrs.is_empty() => Some((false, lit)),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            attrs,
        }) if attrs.is_empty() => match &**expr {
            Expr::Lit(ExprLit { lit, attrs }) if attrs.is_empty() => Some((true, lit)),
            _ => None,
        },
        _ => None,
    }
}

/// The default literal has the kind the field type needs.
fn default_value(cx: &Ctxt, f: &Field<'_>, kind: &FieldTy<'_>, expr: &Expr) {
    let field = f.name();
    let ty = match kind.scalar {
        Scalar::Enum => kind.inner.to_token_stream().to_string().replace(' ', ""),
        s => s.name().to_string(),
    };
    let want = |what: &str, example: &str| {
        let mut msg = format!(
            "default for field `{field}` ({ty}) must be {what}, like `default = {example}`"
        );
        if kind.nullable {
            msg.push_str("\nnote: the default of an `Option` field is the value inside `Some`");
        }
        cx.error_spanned_by(expr, msg);
    };
    let lit = literal(expr);
    match kind.scalar {
        Scalar::I64 | Scalar::I32 => match lit {
            Some((neg, Lit::Int(i))) => {
                let suffix = i.suffix();
                if !suffix.is_empty() && suffix != ty {
                    cx.error_spanned_by(
                        expr,
                        format!("the literal's suffix `{suffix}` does not match the field type `{ty}`: remove it"),
                    );
                    return;
                }
                let value = i
                    .base10_parse::<i128>()
                    .ok()
                    .map(|v| if neg { -v } else { v });
                let fits = value.is_some_and(|v| {
                    if kind.scalar == Scalar::I32 {
                        i32::try_from(v).is_ok()
                    } else {
                        i64::try_from(v).is_ok()
                    }
                });
                if !fits {
                    cx.error_spanned_by(
                        expr,
                        format!("default for field `{field}` does not fit in `{ty}`"),
                    );
                }
            }
            _ => want("an integer literal", "0"),
        },
        Scalar::F64 => {
            let digits = match lit {
                Some((_, Lit::Float(x))) if matches!(x.suffix(), "" | "f64") => x.base10_digits(),
                Some((_, Lit::Int(i))) if matches!(i.suffix(), "" | "f64") => i.base10_digits(),
                _ => {
                    if let Expr::Path(p) = expr {
                        let last = p.path.segments.last().map(|s| s.ident.to_string());
                        if let Some("NAN" | "INFINITY" | "NEG_INFINITY") = last.as_deref() {
                            return cx.error_spanned_by(
                                expr,
                                format!(
                                    "default for field `{field}` ({ty}) must be a finite number \
                                     literal: the store refuses NaN, and a column default cannot \
                                     be infinite"
                                ),
                            );
                        }
                    }
                    return want("a number literal", "0.0");
                }
            };
            // A column default cannot be infinite (there is no portable SQL
            // literal for it), and a literal beyond `f64::MAX` would be.
            if !digits.parse::<f64>().is_ok_and(f64::is_finite) {
                cx.error_spanned_by(
                    expr,
                    format!(
                        "default for field `{field}` ({ty}) must be a finite number: this \
                         literal is beyond `f64::MAX` and would be infinity, which a column \
                         default cannot be"
                    ),
                );
            }
        }
        Scalar::Bool => match lit {
            Some((false, Lit::Bool(_))) => {}
            _ => want("`true` or `false`", "false"),
        },
        Scalar::String => match lit {
            Some((false, Lit::Str(_))) => {}
            _ => want("a string literal", "\"\""),
        },
        Scalar::Bytes => match lit {
            Some((false, Lit::ByteStr(_))) => {}
            _ => want("a byte string literal", "b\"\""),
        },
        Scalar::DateTime => {
            let help = if kind.nullable {
                "help: remove the default: those rows get NULL"
            } else {
                "help: make the field `Option<DateTime<Utc>>`: those rows get NULL"
            };
            cx.error_spanned_by(
                expr,
                format!(
                    "field `{field}` ({ty}) cannot have a default: there is no fixed instant \
                     to give the rows that exist when the column is added\n{help}"
                ),
            );
        }
        Scalar::Enum => match (lit, expr) {
            (Some((false, Lit::Str(s))), _) if syn::parse_str::<syn::Ident>(&s.value()).is_ok() => {
            }
            (_, Expr::Path(p)) if p.path.get_ident().is_some() => {
                let variant = p.path.to_token_stream();
                cx.error_spanned_by(
                    expr,
                    format!(
                        "default for field `{field}` ({ty}) must name the variant in a string, \
                         like `default = \"{variant}\"`"
                    ),
                );
            }
            _ => want("a string naming a variant", "\"Variant\""),
        },
    }
}

/// Table and column names are portable SQL identifiers, and no two columns share one.
fn names(cx: &Ctxt, r: &Record<'_>) {
    let table = r.table();
    if let Some(problem) = sql_name_problem(&table) {
        match &r.attrs.table {
            Some(t) => cx.error_spanned_by(&t.value, format!("table name `{table}` {problem}")),
            None => cx.error_spanned_by(
                r.ident,
                format!(
                    "the table name `{table}` derived from the struct name {problem}\n\
                     help: set one with `#[persist(table = \"name\")]`"
                ),
            ),
        }
    }
    let mut seen: HashMap<String, &Field<'_>> = HashMap::new();
    for f in &r.fields {
        let column = f.column();
        let at: &dyn ToTokens = match &f.attrs.column {
            Some(c) => &c.value,
            None => f.ident,
        };
        if let Some(problem) = sql_name_problem(&column) {
            let help = if f.attrs.column.is_none() {
                "\nhelp: set a column name with `#[persist(column = \"name\")]`"
            } else {
                ""
            };
            cx.error_spanned_by(at, format!("column name `{column}` {problem}{help}"));
            continue;
        }
        if let Some(first) = seen.get(&column) {
            cx.error_spanned_by(
                at,
                format!(
                    "duplicate column name `{column}`: field `{}` already uses it\n\
                     help: choose another name with `#[persist(column = \"...\")]`",
                    first.name()
                ),
            );
        } else {
            seen.insert(column, f);
        }
    }
}

/// Why `name` cannot be a table or column name, if it cannot. Names are kept to
/// plain identifiers so every backend accepts them unquoted and the canonical
/// schema text stays unambiguous; 63 bytes is PostgreSQL's limit (longer names
/// are silently truncated there).
fn sql_name_problem(name: &str) -> Option<&'static str> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("is not valid: use ASCII letters, digits and `_`, not starting with a digit")
    } else if name.len() > 63 {
        Some("is too long: at most 63 characters")
    } else {
        None
    }
}

/// The presentation keys: texts that say something, one descriptive field,
/// `secret` and `multiline` on text, `min` / `max` on numbers.
fn presentation(cx: &Ctxt, r: &Record<'_>) {
    if let Some(t) = &r.attrs.title {
        text(cx, "title", &t.value, false);
    }
    let mut descriptive: Option<&Field<'_>> = None;
    for f in &r.fields {
        let a = &f.attrs;
        if let Some(l) = &a.label {
            text(cx, "label", &l.value, false);
        }
        if let Some(h) = &a.help {
            text(cx, "help", &h.value, true);
        }
        let scalar = f.kind.as_ref().map(|k| k.scalar);
        let ty = || f.ty.to_token_stream().to_string().replace(' ', "");
        if let Some(d) = &a.descriptive {
            match descriptive {
                Some(first) => cx.error_spanned_by(
                    &d.key,
                    format!(
                        "field `{}` is already the descriptive field: a record has at most \
                         one (it names a row where rows are offered as choices)",
                        first.name()
                    ),
                ),
                None => descriptive = Some(f),
            }
            if let Some(s) = &a.secret {
                cx.error_spanned_by(
                    &s.key,
                    "a descriptive field names a row on every page, so it cannot be `secret`",
                );
            }
            if let Some(sc) = scalar {
                if !matches!(sc, Scalar::String | Scalar::I32 | Scalar::I64) {
                    cx.error_spanned_by(
                        &d.key,
                        format!(
                            "a descriptive field must be text or an integer (it names a row in \
                             a choice); field `{}` is `{}`",
                            f.name(),
                            ty()
                        ),
                    );
                }
            }
        }
        if let Some(s) = &a.secret {
            if f.is_key() {
                cx.error_spanned_by(
                    &s.key,
                    "the key cannot be `secret`: it names the record in every URL and reference",
                );
            } else if let Some(sc) = scalar {
                if !matches!(sc, Scalar::String | Scalar::Bytes) {
                    cx.error_spanned_by(
                        &s.key,
                        format!(
                            "`secret` applies to `String` or `Vec<u8>` fields (a password, a \
                             key); field `{}` is `{}`",
                            f.name(),
                            ty()
                        ),
                    );
                }
            }
            if let Some(r) = &a.references {
                cx.error_spanned_by(
                    &r.key,
                    "a reference cannot be `secret`: it is offered as a choice of rows",
                );
            }
        }
        if let Some(m) = &a.multiline {
            if scalar.is_some_and(|sc| sc != Scalar::String) {
                cx.error_spanned_by(
                    &m.key,
                    format!(
                        "`multiline` applies to `String` fields; field `{}` is `{}`",
                        f.name(),
                        ty()
                    ),
                );
            } else if let Some(s) = &a.secret {
                cx.error_spanned_by(
                    &s.key,
                    "a secret is entered on one line: remove `multiline` or `secret`",
                );
            }
        }
        let min = a.min.as_ref().and_then(|m| bound(cx, f, "min", m));
        let max = a.max.as_ref().and_then(|m| bound(cx, f, "max", m));
        if let (Some(lo), Some(hi), Some(m)) = (min, max, &a.max) {
            if lo > hi {
                cx.error_spanned_by(
                    &m.value,
                    format!("`max` ({hi}) is below `min` ({lo}): no value would be accepted"),
                );
            }
        }
        if let (Some(d), Some(kind)) = (&a.default, &f.kind) {
            if matches!(kind.scalar, Scalar::I32 | Scalar::I64 | Scalar::F64) {
                let value = number(&d.value);
                let out = value.is_some_and(|v| min.is_some_and(|lo| v < lo))
                    || value.is_some_and(|v| max.is_some_and(|hi| v > hi));
                if out {
                    cx.error_spanned_by(
                        &d.value,
                        format!(
                            "the default of field `{}` is outside its `min` / `max` range",
                            f.name()
                        ),
                    );
                }
            }
        }
    }
}

/// A label, title or help text: not empty, and one line unless `multi`.
fn text(cx: &Ctxt, key: &str, s: &syn::LitStr, multi: bool) {
    let v = s.value();
    if v.trim().is_empty() {
        cx.error_spanned_by(
            s,
            format!("`{key}` cannot be empty: remove it or say something"),
        );
    } else if !multi && v.contains(['\n', '\r']) {
        cx.error_spanned_by(
            s,
            format!("`{key}` is shown on one line: remove the line break (put details in `help`)"),
        );
    }
}

/// A number literal's value.
pub(crate) fn number(expr: &Expr) -> Option<f64> {
    let (neg, lit) = literal(expr)?;
    let v = match lit {
        Lit::Int(i) => i.base10_digits().parse::<f64>().ok()?,
        Lit::Float(x) => x.base10_digits().parse::<f64>().ok()?,
        _ => return None,
    };
    Some(if neg { -v } else { v })
}

/// Checks a `min` / `max` bound: a number field, not the identity key, and
/// a literal of the field's kind that fits it. Its value when it is good.
fn bound(cx: &Ctxt, f: &Field<'_>, key: &str, s: &crate::attr::Setting<Expr>) -> Option<f64> {
    let kind = f.kind.as_ref()?;
    let field = f.name();
    if !matches!(kind.scalar, Scalar::I32 | Scalar::I64 | Scalar::F64) {
        let ty = f.ty.to_token_stream().to_string().replace(' ', "");
        cx.error_spanned_by(
            &s.key,
            format!("`{key}` applies to number fields (i32, i64, f64); field `{field}` is `{ty}`"),
        );
        return None;
    }
    if f.attrs.identity.is_some() {
        cx.error_spanned_by(
            &s.key,
            format!("an `identity` key is assigned by the store: it cannot have a `{key}`"),
        );
        return None;
    }
    let ty = kind.scalar.name();
    let lit = literal(&s.value);
    let value = match (kind.scalar, lit) {
        (Scalar::I32 | Scalar::I64, Some((neg, Lit::Int(i)))) if i.suffix().is_empty() => {
            let v = i
                .base10_parse::<i128>()
                .ok()
                .map(|v| if neg { -v } else { v });
            let fits = v.is_some_and(|v| {
                if kind.scalar == Scalar::I32 {
                    i32::try_from(v).is_ok()
                } else {
                    i64::try_from(v).is_ok()
                }
            });
            if !fits {
                cx.error_spanned_by(&s.value, format!("`{key}` does not fit in `{ty}`"));
                return None;
            }
            number(&s.value)
        }
        (Scalar::F64, Some((_, Lit::Int(i)))) if i.suffix().is_empty() => number(&s.value),
        (Scalar::F64, Some((_, Lit::Float(x)))) if x.suffix().is_empty() => {
            number(&s.value).filter(|v| v.is_finite())
        }
        _ => None,
    };
    if value.is_none() {
        let example = if kind.scalar == Scalar::F64 {
            "0.5"
        } else {
            "1"
        };
        cx.error_spanned_by(
            &s.value,
            format!(
                "`{key}` of field `{field}` ({ty}) must be a finite number literal without \
                 a suffix, like `{key} = {example}`"
            ),
        );
    }
    value
}
