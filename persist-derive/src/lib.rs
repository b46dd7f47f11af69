//! Derive macros of persist (work in progress).
use proc_macro::TokenStream;

/// Placeholder until the derive lands.
#[proc_macro_derive(PersistentRecord, attributes(persist))]
pub fn derive_persistent_record(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Placeholder until the derive lands.
#[proc_macro_derive(PersistentEnum, attributes(persist))]
pub fn derive_persistent_enum(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
