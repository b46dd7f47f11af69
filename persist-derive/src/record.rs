//! Code generation of `#[derive(PersistentRecord)]`.

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{DeriveInput, Lit, Path};

use crate::ast::{Field, Record};
use crate::attr::OnDelete;
use crate::check;
use crate::ctxt::Ctxt;
use crate::ty::Scalar;

pub(crate) fn derive(input: DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let record = Record::from_ast(&cx, &input);
    if let Some(record) = &record {
        check::record(&cx, record);
    }
    cx.check()?;
    match record {
        Some(record) => Ok(expand(&record)),
        None => Err(syn::Error::new_spanned(
            &input.ident,
            "persist-derive bug: no record and no error",
        )),
    }
}

/// The crate path of the generated code: `#[persist(crate = ...)]`, else the facade.
pub(crate) fn krate(path: Option<&Path>) -> TokenStream {
    match path {
        Some(p) => quote!(#p),
        None => quote!(::persist),
    }
}

fn expand(r: &Record<'_>) -> TokenStream {
    let krate = krate(r.attrs.krate.as_ref().map(|s| &s.value));
    let ident = r.ident;
    let vis = &r.original.vis;
    let type_name = ident.to_string();
    let table = r.table();
    let n = Literal::usize_unsuffixed(r.fields.len());
    let columns_ident = format_ident!("{}Columns", ident);
    let columns_doc = format!("Typed column handles of [`{ident}`], for filters and ordering.");

    // The checks guarantee exactly one key field.
    let key_index = r.key_index().unwrap_or(0);
    let key_field = &r.fields[key_index];
    let key_ident = key_field.ident;
    let key_ty = key_field.ty;
    let key_kind = if key_field.attrs.identity.is_some() {
        quote!(#krate::KeyKind::Identity)
    } else {
        quote!(#krate::KeyKind::Explicit)
    };
    let key_index = Literal::usize_unsuffixed(key_index);

    let idents: Vec<_> = r.fields.iter().map(|f| f.ident).collect();
    let tys: Vec<_> = r.fields.iter().map(|f| f.ty).collect();
    let column_names: Vec<_> = r.fields.iter().map(Field::column).collect();
    let column_docs = column_names.iter().map(|c| format!("The `{c}` column."));
    let column_metas = r.fields.iter().map(|f| column_meta(&krate, f));
    // Spanned at the field type: for a type that is not a FieldType, the bound
    // error of `Column::new` lands on the type rather than on the derive.
    let column_handles = r.fields.iter().enumerate().map(|(i, f)| {
        let index = Literal::usize_unsuffixed(i);
        let name = f.column();
        {
            // Every token of the path carries the type's span (the crate path's
            // too), so the error covers the type instead of the derive.
            let span = f.ty.span();
            let krate = respan(&krate, span);
            quote_spanned!(span=> #krate::Column::new(#index, #name))
        }
    });
    let assertions = r.fields.iter().map(|f| assertions(&krate, f));

    let bounds: Vec<TokenStream> = r.fields.iter().filter_map(|f| bounds(f)).collect();
    let user = r.attrs.validate.as_ref().map(|v| {
        let path = &v.value;
        let call = quote_spanned!(path.span()=> #path(self));
        quote!(#krate::__private::validation_message(#call))
    });
    let validate = (!bounds.is_empty() || user.is_some()).then(|| {
        let user = user.unwrap_or_else(|| quote!(::core::result::Result::Ok(())));
        quote! {
            fn validate(&self) -> ::core::result::Result<(), ::std::string::String> {
                #(#bounds)*
                #user
            }
        }
    });
    let title = match &r.attrs.title {
        Some(t) => {
            let t = &t.value;
            quote!(::core::option::Option::Some(#t))
        }
        None => quote!(::core::option::Option::None),
    };

    quote! {
        const _: () = {
            #[doc = #columns_doc]
            #[derive(::core::clone::Clone, ::core::marker::Copy, ::core::fmt::Debug)]
            #[allow(non_camel_case_types, private_interfaces)]
            #vis struct #columns_ident {
                #(
                    #[doc = #column_docs]
                    pub #idents: #krate::Column<#ident, #tys>,
                )*
            }

            #(#assertions)*

            #[automatically_derived]
            impl #krate::PersistentRecord for #ident {
                type Key = #key_ty;
                type Columns = #columns_ident;

                fn meta() -> &'static #krate::RecordMeta {
                    static META: #krate::__private::OnceLock<#krate::RecordMeta> =
                        #krate::__private::OnceLock::new();
                    META.get_or_init(|| #krate::RecordMeta {
                        type_name: #type_name,
                        table: #table,
                        columns: #krate::__private::Vec::from([#(#column_metas),*]),
                        key: #key_index,
                        key_kind: #key_kind,
                        title: #title,
                        check_row: ::core::option::Option::Some(|row| {
                            let record = <Self as #krate::PersistentRecord>::from_row(row)
                                .map_err(|e| ::std::string::ToString::to_string(&e))?;
                            <Self as #krate::PersistentRecord>::validate(&record)
                        }),
                    })
                }

                fn columns() -> Self::Columns {
                    #columns_ident {
                        #(#idents: #column_handles,)*
                    }
                }

                fn to_row(&self) -> #krate::__private::Vec<#krate::Value> {
                    #krate::__private::Vec::from([
                        #(<#tys as #krate::FieldType>::to_value(&self.#idents),)*
                    ])
                }

                fn from_row(
                    row: #krate::__private::Vec<#krate::Value>,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    let found = row.len();
                    if found != #n {
                        return ::core::result::Result::Err(#krate::DecodeError::ColumnCount {
                            expected: #n,
                            found,
                        });
                    }
                    let mut row = row.into_iter();
                    // Struct expressions evaluate their fields in the order written,
                    // which is column order.
                    ::core::result::Result::Ok(Self {
                        #(
                            #idents: <#tys as #krate::FieldType>::from_value(
                                #krate::__private::next_value(&mut row, #n, found)?,
                            )?,
                        )*
                    })
                }

                fn key(&self) -> Self::Key {
                    ::core::clone::Clone::clone(&self.#key_ident)
                }

                #validate
            }
        };
    }
}

fn column_meta(krate: &TokenStream, f: &Field<'_>) -> TokenStream {
    let ui = column_ui(krate, f);
    let ty = f.ty;
    let name = f.column();
    let field = f.name();
    let unique = f.attrs.unique.is_some();
    let indexed = f.attrs.indexed.is_some();
    let default = match (&f.attrs.default, &f.kind) {
        (Some(d), Some(kind)) => {
            let value = default_expr(&d.value, kind.scalar, kind.inner);
            let value = if kind.nullable {
                quote!(::core::option::Option::Some(#value))
            } else {
                value
            };
            quote! {
                ::core::option::Option::Some(<#ty as #krate::FieldType>::to_value(&{
                    let v: #ty = #value;
                    v
                }))
            }
        }
        _ => quote!(::core::option::Option::None),
    };
    let reference = match &f.attrs.references {
        Some(target) => {
            let target = &target.value;
            let on_delete = match f.attrs.on_delete.as_ref().map(|o| o.value) {
                Some(OnDelete::Cascade) => quote!(#krate::OnDelete::Cascade),
                Some(OnDelete::Restrict) | None => quote!(#krate::OnDelete::Restrict),
            };
            quote! {
                ::core::option::Option::Some(#krate::Reference {
                    target: <#target as #krate::PersistentRecord>::meta,
                    on_delete: #on_delete,
                })
            }
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {
        #krate::ColumnMeta {
            name: #name,
            field: #field,
            sql_type: <#ty as #krate::FieldType>::SQL_TYPE,
            nullable: <#ty as #krate::FieldType>::NULLABLE,
            unique: #unique,
            indexed: #indexed,
            default: #default,
            reference: #reference,
            variants: <#ty as #krate::FieldType>::variants(),
            ui: #ui,
        }
    }
}

/// The column's presentation (`ColumnUi`); `check` has validated it.
fn column_ui(krate: &TokenStream, f: &Field<'_>) -> TokenStream {
    let a = &f.attrs;
    let text = |s: &Option<crate::attr::Setting<syn::LitStr>>| match s {
        Some(s) => {
            let v = &s.value;
            quote!(::core::option::Option::Some(#v))
        }
        None => quote!(::core::option::Option::None),
    };
    let bound = |s: &Option<crate::attr::Setting<syn::Expr>>| match s
        .as_ref()
        .and_then(|s| check::number(&s.value))
    {
        Some(v) => {
            let v = Literal::f64_suffixed(v);
            quote!(::core::option::Option::Some(#v))
        }
        None => quote!(::core::option::Option::None),
    };
    let (label, help) = (text(&a.label), text(&a.help));
    let (descriptive, secret, multiline) = (
        a.descriptive.is_some(),
        a.secret.is_some(),
        a.multiline.is_some(),
    );
    let (min, max) = (bound(&a.min), bound(&a.max));
    quote! {
        #krate::ColumnUi {
            label: #label,
            help: #help,
            descriptive: #descriptive,
            secret: #secret,
            multiline: #multiline,
            min: #min,
            max: #max,
        }
    }
}

/// The `min` / `max` checks of a field, run before the record's validator.
fn bounds(f: &Field<'_>) -> Option<TokenStream> {
    let kind = f.kind.as_ref()?;
    if f.attrs.min.is_none() && f.attrs.max.is_none() {
        return None;
    }
    let ident = f.ident;
    let inner = kind.inner;
    let name = match &f.attrs.label {
        Some(l) => l.value.value(),
        None => f.name(),
    }
    .replace('{', "{{")
    .replace('}', "}}");
    let check = |s: &Option<crate::attr::Setting<syn::Expr>>, op: TokenStream, word: &str| {
        s.as_ref().map(|s| {
            let value = default_expr(&s.value, kind.scalar, inner);
            let shown = s.value.to_token_stream().to_string().replace(' ', "");
            let message = format!("{name} must be {word} {shown}, not {{}}");
            quote! {
                let bound: #inner = #value;
                if !(*v #op bound) {
                    return ::core::result::Result::Err(::std::format!(#message, v));
                }
            }
        })
    };
    let lo = check(&f.attrs.min, quote!(>=), "at least");
    let hi = check(&f.attrs.max, quote!(<=), "at most");
    Some(if kind.nullable {
        quote! {
            if let ::core::option::Option::Some(v) = &self.#ident {
                #lo
                #hi
            }
        }
    } else {
        quote! {
            {
                let v = &self.#ident;
                #lo
                #hi
            }
        }
    })
}

/// `tokens` with every span set to `span`. Spans of user tokens resolve names at
/// the call site like `Span::call_site()`, so this only moves where errors point.
fn respan(tokens: &TokenStream, span: proc_macro2::Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(&g.stream(), span));
                group.set_span(span);
                tt = group.into();
            }
            tt.set_span(span);
            tt
        })
        .collect()
}

/// The default's value of the non-Option type; `check` has validated its kind.
fn default_expr(expr: &syn::Expr, scalar: Scalar, inner: &syn::Type) -> TokenStream {
    let lit = check::literal(expr);
    match (scalar, lit) {
        // `let v: f64 = 5;` does not compile: write an integer as a float literal.
        (Scalar::F64, Some((neg, Lit::Int(i)))) => {
            let float = syn::LitFloat::new(&format!("{}.0", i.base10_digits()), i.span());
            let minus = neg.then(|| quote!(-));
            quote!(#minus #float)
        }
        (Scalar::String, _) => quote!(::std::string::String::from(#expr)),
        (Scalar::Bytes, _) => quote!(<[u8]>::to_vec(#expr)),
        (Scalar::Enum, Some((_, Lit::Str(s)))) => {
            // A variant that does not exist is a compile error on the literal.
            match syn::parse_str::<syn::Ident>(&s.value()) {
                Ok(mut variant) => {
                    variant.set_span(s.span());
                    quote!(<#inner>::#variant)
                }
                Err(_) => quote!(#expr),
            }
        }
        _ => quote!(#expr),
    }
}

/// Compile-time checks whose errors land on the user's tokens.
fn assertions(krate: &TokenStream, f: &Field<'_>) -> TokenStream {
    let mut out = TokenStream::new();
    let Some(kind) = &f.kind else {
        return out;
    };
    let inner = kind.inner;
    if kind.scalar == Scalar::Enum {
        out.extend(quote_spanned! {inner.span()=>
            const _: fn() = || {
                fn assert_field_type<T: #krate::FieldType>() {}
                assert_field_type::<#inner>();
            };
        });
    }
    if let Some(target) = &f.attrs.references {
        let target = &target.value;
        let name = target.to_token_stream().to_string().replace(' ', "");
        let field = f.name();
        let message = format!(
            "field `{field}` references `{name}`, whose key is `{{Self}}`, but the field holds `{{K}}`"
        );
        let label = format!("the key of `{name}` is `{{Self}}`");
        let note = "a reference field holds the referenced record's key: make the field \
                    `{Self}`, or `Option<{Self}>` for an optional reference";
        out.extend(quote_spanned! {target.span()=>
            const _: fn() = || {
                #[diagnostic::on_unimplemented(message = #message, label = #label, note = #note)]
                trait ReferencedKey<K> {}
                impl<K> ReferencedKey<K> for K {}
                fn referenced_key_matches_field<T: ReferencedKey<K>, K>() {}
                referenced_key_matches_field::<<#target as #krate::PersistentRecord>::Key, #inner>();
            };
        });
    }
    out
}
