//! Parsing of `#[persist(...)]` attributes into plain settings.
//!
//! Every problem is recorded in the [`Ctxt`] and parsing goes on with the next
//! key, so one compile reports every bad key of a type.

use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, ExprLit, Lit, LitStr, Path, Token};

use crate::ctxt::Ctxt;
use crate::symbol::*;

/// One key as written, with the path token for errors that concern it.
pub(crate) struct Setting<T> {
    /// The key as written (`unique` in `#[persist(unique)]`): where errors about it go.
    pub(crate) key: Path,
    pub(crate) value: T,
}

/// A flag key (`#[persist(unique)]`).
pub(crate) type Flag = Option<Setting<()>>;

/// Container attributes of `#[derive(PersistentRecord)]`.
#[derive(Default)]
pub(crate) struct RecordAttrs {
    pub(crate) krate: Option<Setting<Path>>,
    pub(crate) table: Option<Setting<LitStr>>,
    pub(crate) validate: Option<Setting<Path>>,
    /// What the pages call the record type (`#[persist(title = "Devices")]`).
    pub(crate) title: Option<Setting<LitStr>>,
}

/// Container attributes of `#[derive(PersistentEnum)]`.
#[derive(Default)]
pub(crate) struct EnumAttrs {
    pub(crate) krate: Option<Setting<Path>>,
}

/// Field attributes of `#[derive(PersistentRecord)]`.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub(crate) column: Option<Setting<LitStr>>,
    pub(crate) identity: Flag,
    pub(crate) key: Flag,
    pub(crate) unique: Flag,
    pub(crate) indexed: Flag,
    pub(crate) default: Option<Setting<Expr>>,
    pub(crate) references: Option<Setting<Path>>,
    pub(crate) on_delete: Option<Setting<OnDelete>>,
    // Presentation: what pages and the API document show; not part of the schema.
    pub(crate) label: Option<Setting<LitStr>>,
    pub(crate) help: Option<Setting<LitStr>>,
    pub(crate) descriptive: Flag,
    pub(crate) secret: Flag,
    pub(crate) multiline: Flag,
    pub(crate) min: Option<Setting<Expr>>,
    pub(crate) max: Option<Setting<Expr>>,
}

/// Variant attributes of `#[derive(PersistentEnum)]`.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    pub(crate) rename: Option<Setting<LitStr>>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum OnDelete {
    Restrict,
    Cascade,
}

/// A key and the form shown in help messages.
struct Key(Symbol, &'static str);

const RECORD_KEYS: &[Key] = &[
    Key(TABLE, r#"#[persist(table = "name")]"#),
    Key(VALIDATE, "#[persist(validate = path::to_fn)]"),
    Key(CRATE, r#"#[persist(crate = "persist")]"#),
    Key(TITLE, r#"#[persist(title = "Devices")]"#),
];
const ENUM_KEYS: &[Key] = &[Key(CRATE, r#"#[persist(crate = "persist")]"#)];
const FIELD_KEYS: &[Key] = &[
    Key(COLUMN, r#"#[persist(column = "name")]"#),
    Key(IDENTITY, "#[persist(identity)]"),
    Key(KEY, "#[persist(key)]"),
    Key(UNIQUE, "#[persist(unique)]"),
    Key(INDEXED, "#[persist(indexed)]"),
    Key(DEFAULT, "#[persist(default = 0)]"),
    Key(REFERENCES, "#[persist(references = OtherRecord)]"),
    Key(
        ON_DELETE,
        r#"#[persist(references = OtherRecord, on_delete = "cascade")]"#,
    ),
    Key(LABEL, r#"#[persist(label = "Port")]"#),
    Key(HELP, r#"#[persist(help = "The device's TCP port")]"#),
    Key(DESCRIPTIVE, "#[persist(descriptive)]"),
    Key(SECRET, "#[persist(secret)]"),
    Key(MULTILINE, "#[persist(multiline)]"),
    Key(MIN, "#[persist(min = 1)]"),
    Key(MAX, "#[persist(max = 65535)]"),
];
const VARIANT_KEYS: &[Key] = &[Key(RENAME, r#"#[persist(rename = "stored name")]"#)];

/// Names other derive crates use for a key, and the key they mean here.
const ALIASES: &[(&str, &str)] = &[
    ("primary_key", "identity"),
    ("primary", "identity"),
    ("pk", "identity"),
    ("id", "identity"),
    ("auto_increment", "identity"),
    ("autoincrement", "identity"),
    ("serial", "identity"),
    ("name", "column"),
    ("column_name", "column"),
    ("rename", "column"),
    ("index", "indexed"),
    ("foreign_key", "references"),
    ("fk", "references"),
    ("belongs_to", "references"),
    ("table_name", "table"),
    ("validator", "validate"),
    ("name", "rename"),
    ("description", "help"),
    ("doc", "help"),
    ("caption", "label"),
    ("display", "descriptive"),
    ("display_name", "descriptive"),
    ("password", "secret"),
    ("sensitive", "secret"),
    ("textarea", "multiline"),
    ("minimum", "min"),
    ("maximum", "max"),
];

/// Where an attribute sits, for the hint on a key that belongs elsewhere.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Place {
    Record,
    RecordField,
    Enum,
    Variant,
}

impl Place {
    fn keys(self) -> &'static [Key] {
        match self {
            Place::Record => RECORD_KEYS,
            Place::RecordField => FIELD_KEYS,
            Place::Enum => ENUM_KEYS,
            Place::Variant => VARIANT_KEYS,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Place::Record => "on the struct of a `#[derive(PersistentRecord)]`",
            Place::RecordField => "on a field of a `#[derive(PersistentRecord)]`",
            Place::Enum => "on the enum of a `#[derive(PersistentEnum)]`",
            Place::Variant => "on a variant of a `#[derive(PersistentEnum)]`",
        }
    }
}

pub(crate) fn record_attrs(cx: &Ctxt, attrs: &[Attribute]) -> RecordAttrs {
    let mut out = RecordAttrs::default();
    parse(cx, attrs, Place::Record, |meta, key| {
        match key.0 {
            k if k == TABLE => set(cx, &mut out.table, meta, parse_str(meta, key)?),
            k if k == VALIDATE => set(cx, &mut out.validate, meta, parse_path(meta, key)?),
            k if k == TITLE => set(cx, &mut out.title, meta, parse_str(meta, key)?),
            _ => set(cx, &mut out.krate, meta, parse_crate(meta, key)?),
        }
        Ok(())
    });
    out
}

pub(crate) fn enum_attrs(cx: &Ctxt, attrs: &[Attribute]) -> EnumAttrs {
    let mut out = EnumAttrs::default();
    parse(cx, attrs, Place::Enum, |meta, key| {
        set(cx, &mut out.krate, meta, parse_crate(meta, key)?);
        Ok(())
    });
    out
}

pub(crate) fn field_attrs(cx: &Ctxt, attrs: &[Attribute]) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    parse(cx, attrs, Place::RecordField, |meta, key| {
        match key.0 {
            k if k == COLUMN => set(cx, &mut out.column, meta, parse_str(meta, key)?),
            k if k == IDENTITY => set_flag(cx, &mut out.identity, meta, key),
            k if k == KEY => set_flag(cx, &mut out.key, meta, key),
            k if k == UNIQUE => set_flag(cx, &mut out.unique, meta, key),
            k if k == INDEXED => set_flag(cx, &mut out.indexed, meta, key),
            k if k == DEFAULT => set(cx, &mut out.default, meta, parse_value(meta, key)?),
            k if k == REFERENCES => set(cx, &mut out.references, meta, parse_path(meta, key)?),
            k if k == ON_DELETE => set(cx, &mut out.on_delete, meta, parse_on_delete(meta, key)?),
            k if k == LABEL => set(cx, &mut out.label, meta, parse_str(meta, key)?),
            k if k == HELP => set(cx, &mut out.help, meta, parse_str(meta, key)?),
            k if k == DESCRIPTIVE => set_flag(cx, &mut out.descriptive, meta, key),
            k if k == SECRET => set_flag(cx, &mut out.secret, meta, key),
            k if k == MULTILINE => set_flag(cx, &mut out.multiline, meta, key),
            k if k == MIN => set(cx, &mut out.min, meta, parse_value(meta, key)?),
            _ => set(cx, &mut out.max, meta, parse_value(meta, key)?),
        }
        Ok(())
    });
    out
}

pub(crate) fn variant_attrs(cx: &Ctxt, attrs: &[Attribute]) -> VariantAttrs {
    let mut out = VariantAttrs::default();
    parse(cx, attrs, Place::Variant, |meta, key| {
        set(cx, &mut out.rename, meta, parse_str(meta, key)?);
        Ok(())
    });
    out
}

/// Runs `f` on every known key of every `#[persist(...)]` attribute in `attrs`.
/// Errors `f` returns are recorded and parsing continues with the next key.
fn parse(
    cx: &Ctxt,
    attrs: &[Attribute],
    place: Place,
    mut f: impl FnMut(&ParseNestedMeta<'_>, &Key) -> syn::Result<()>,
) {
    for attr in attrs {
        if attr.path() != PERSIST {
            continue;
        }
        if !matches!(attr.meta, syn::Meta::List(_)) {
            let form = place.keys()[0].1;
            cx.error_spanned_by(
                attr,
                format!(
                    "expected a list of keys: `#[persist(...)]`\n\
                     help: the correct format looks like `{form}`"
                ),
            );
            continue;
        }
        let result = attr.parse_nested_meta(|meta| {
            match place.keys().iter().find(|k| meta.path == k.0) {
                Some(key) => {
                    if let Err(err) = f(&meta, key) {
                        cx.syn_error(err);
                        skip_value(&meta);
                    }
                }
                None => {
                    cx.syn_error(unknown_key(&meta, place));
                    skip_value(&meta);
                }
            }
            Ok(())
        });
        if let Err(err) = result {
            cx.syn_error(err);
        }
    }
}

fn unknown_key(meta: &ParseNestedMeta<'_>, place: Place) -> syn::Error {
    let path = &meta.path;
    let name = quote::quote!(#path).to_string().replace(' ', "");
    let keys = place.keys();
    let expected: Vec<&str> = keys.iter().map(|k| k.0 .0).collect();
    let mut msg = format!(
        "unknown persist attribute `{name}`; expected one of: {}",
        expected.join(", ")
    );
    // A key of another place is a misplacement, not a typo: say where it goes.
    let elsewhere = [
        Place::Record,
        Place::RecordField,
        Place::Enum,
        Place::Variant,
    ]
    .into_iter()
    .filter(|p| *p != place)
    .find_map(|p| p.keys().iter().find(|k| k.0 .0 == name).map(|k| (p, k)));
    let closest = keys
        .iter()
        .map(|k| (distance(&name, k.0 .0), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k);
    // What the user most likely meant: a known alias, then a key of another
    // place (a misplacement, not a typo), then a close spelling.
    let alias = ALIASES
        .iter()
        .filter(|(a, _)| *a == name)
        .find_map(|(_, meant)| keys.iter().find(|k| k.0 .0 == *meant));
    match (alias, elsewhere, closest) {
        (Some(k), _, _) => msg.push_str(&format!(
            "\nhelp: did you mean `{}`? the correct format looks like `{}`",
            k.0, k.1
        )),
        (None, Some((p, k)), _) => msg.push_str(&format!(
            "\nhelp: `{name}` belongs {}: `{}`",
            p.describe(),
            k.1
        )),
        (None, None, Some(k)) => {
            msg.push_str(&format!("\nhelp: the correct format looks like `{}`", k.1))
        }
        (None, None, None) => msg.push_str(&format!(
            "\nhelp: the correct format looks like `{}`",
            keys[0].1
        )),
    }
    meta.error(msg)
}

/// Levenshtein distance, to suggest the key a typo meant.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Consumes whatever value follows a key, so parsing can go on after an error.
fn skip_value(meta: &ParseNestedMeta<'_>) {
    if meta.input.peek(Token![=]) {
        // An expression ends at the `,` before the next key.
        let _ = meta.value().and_then(|v| v.parse::<Expr>());
    } else if meta.input.peek(syn::token::Paren) {
        let _ = meta.input.parse::<proc_macro2::Group>();
    }
}

fn set<T>(cx: &Ctxt, slot: &mut Option<Setting<T>>, meta: &ParseNestedMeta<'_>, value: T) {
    if slot.is_some() {
        let path = &meta.path;
        let name = quote::quote!(#path).to_string();
        cx.error_spanned_by(
            path,
            format!("duplicate persist attribute `{name}`: it is already set for this item"),
        );
    } else {
        *slot = Some(Setting {
            key: meta.path.clone(),
            value,
        });
    }
}

fn help(key: &Key) -> String {
    format!("help: the correct format looks like `{}`", key.1)
}

/// The expression after `key =`.
fn parse_value(meta: &ParseNestedMeta<'_>, key: &Key) -> syn::Result<Expr> {
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format!("`{}` needs a value\n{}", key.0, help(key))));
    }
    meta.value()?.parse()
}

fn set_flag(cx: &Ctxt, slot: &mut Flag, meta: &ParseNestedMeta<'_>, key: &Key) {
    parse_flag(cx, meta, key);
    set(cx, slot, meta, ());
}

/// A flag given a value is reported but still counts as set, so the error does
/// not cascade (a rejected `identity = true` would also report a missing key).
fn parse_flag(cx: &Ctxt, meta: &ParseNestedMeta<'_>, key: &Key) {
    if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
        cx.syn_error(meta.error(format!("`{}` takes no value\n{}", key.0, help(key))));
        skip_value(meta);
    }
}

fn parse_str(meta: &ParseNestedMeta<'_>, key: &Key) -> syn::Result<LitStr> {
    match parse_value(meta, key)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{}` expects a string literal\n{}", key.0, help(key)),
        )),
    }
}

fn parse_path(meta: &ParseNestedMeta<'_>, key: &Key) -> syn::Result<Path> {
    match parse_value(meta, key)? {
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Ok(p.path),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`{}` expects a path, without quotes\n{}", key.0, help(key)),
        )),
    }
}

/// `crate = "path"` (serde's form), or the path itself.
fn parse_crate(meta: &ParseNestedMeta<'_>, key: &Key) -> syn::Result<Path> {
    match parse_value(meta, key)? {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => s.parse::<Path>().map_err(|_| {
            syn::Error::new_spanned(
                &s,
                format!(
                    "`{}` is not a path: name the crate that re-exports persist, \
                     like `persist` or `my_sdk::persist`\n{}",
                    s.value(),
                    help(key)
                ),
            )
        }),
        Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => Ok(p.path),
        other => Err(syn::Error::new_spanned(
            other,
            format!("`crate` expects a path as a string\n{}", help(key)),
        )),
    }
}

fn parse_on_delete(meta: &ParseNestedMeta<'_>, key: &Key) -> syn::Result<OnDelete> {
    let expr = parse_value(meta, key)?;
    let bad = |what: String| {
        syn::Error::new_spanned(
            &expr,
            format!(
                "{what}; expected `\"restrict\"` or `\"cascade\"`\n{}",
                help(key)
            ),
        )
    };
    match &expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => match s.value().as_str() {
            "restrict" => Ok(OnDelete::Restrict),
            "cascade" => Ok(OnDelete::Cascade),
            other => Err(bad(format!("unknown on_delete action `{other}`"))),
        },
        Expr::Path(p) if p.path.is_ident("restrict") || p.path.is_ident("cascade") => {
            let action = p.path.to_token_stream();
            Err(syn::Error::new_spanned(
                &expr,
                format!("`on_delete` expects a string: write `on_delete = \"{action}\"`"),
            ))
        }
        _ => Err(bad("`on_delete` expects a string".into())),
    }
}
