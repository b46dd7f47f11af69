//! Code generation of `#[derive(PersistentEnum)]`.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::ast::Enum;
use crate::check;
use crate::ctxt::Ctxt;
use crate::record::krate;

pub(crate) fn derive(input: DeriveInput) -> syn::Result<TokenStream> {
    let cx = Ctxt::new();
    let model = Enum::from_ast(&cx, &input);
    if let Some(model) = &model {
        check::enumeration(&cx, model);
    }
    cx.check()?;
    match model {
        Some(model) => Ok(expand(&model)),
        None => Err(syn::Error::new_spanned(
            &input.ident,
            "persist-derive bug: no enum and no error",
        )),
    }
}

fn expand(e: &Enum<'_>) -> TokenStream {
    let krate = krate(e.attrs.krate.as_ref().map(|s| &s.value));
    let ident = e.ident;
    let variants: Vec<_> = e.variants.iter().map(|v| v.ident).collect();
    let names: Vec<_> = e.variants.iter().map(|v| v.stored_name()).collect();

    quote! {
        const _: () = {
            #[automatically_derived]
            impl #krate::PersistentEnum for #ident {
                const VARIANTS: &'static [&'static str] = &[#(#names),*];

                fn variant_name(&self) -> &'static str {
                    match self {
                        #(Self::#variants => #names,)*
                    }
                }

                fn from_variant_name(name: &str) -> ::core::option::Option<Self> {
                    match name {
                        #(#names => ::core::option::Option::Some(Self::#variants),)*
                        _ => ::core::option::Option::None,
                    }
                }
            }

            #[automatically_derived]
            impl #krate::FieldType for #ident {
                const SQL_TYPE: #krate::SqlType = #krate::SqlType::Text;

                fn to_value(&self) -> #krate::Value {
                    #krate::Value::Text(::std::string::ToString::to_string(
                        <Self as #krate::PersistentEnum>::variant_name(self),
                    ))
                }

                fn from_value(
                    value: #krate::Value,
                ) -> ::core::result::Result<Self, #krate::DecodeError> {
                    #krate::__private::enum_from_value(value)
                }

                fn variants() -> ::core::option::Option<&'static [&'static str]> {
                    ::core::option::Option::Some(<Self as #krate::PersistentEnum>::VARIANTS)
                }
            }
        };
    }
}
