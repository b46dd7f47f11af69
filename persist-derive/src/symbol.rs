//! The keywords of the `persist` attribute namespace, compared against parsed paths
//! (serde_derive's `symbol.rs`), so a misspelt keyword in this crate is a compile error
//! rather than a silently ignored attribute.

use std::fmt;

use syn::{Ident, Path};

#[derive(Copy, Clone, PartialEq, Eq)]
pub(crate) struct Symbol(pub(crate) &'static str);

pub(crate) const PERSIST: Symbol = Symbol("persist");

// Container attributes.
pub(crate) const CRATE: Symbol = Symbol("crate");
pub(crate) const TABLE: Symbol = Symbol("table");
pub(crate) const VALIDATE: Symbol = Symbol("validate");
pub(crate) const TITLE: Symbol = Symbol("title");

// Field attributes.
pub(crate) const COLUMN: Symbol = Symbol("column");
pub(crate) const IDENTITY: Symbol = Symbol("identity");
pub(crate) const KEY: Symbol = Symbol("key");
pub(crate) const UNIQUE: Symbol = Symbol("unique");
pub(crate) const INDEXED: Symbol = Symbol("indexed");
pub(crate) const DEFAULT: Symbol = Symbol("default");
pub(crate) const REFERENCES: Symbol = Symbol("references");
pub(crate) const ON_DELETE: Symbol = Symbol("on_delete");
pub(crate) const LABEL: Symbol = Symbol("label");
pub(crate) const HELP: Symbol = Symbol("help");
pub(crate) const DESCRIPTIVE: Symbol = Symbol("descriptive");
pub(crate) const SECRET: Symbol = Symbol("secret");
pub(crate) const MULTILINE: Symbol = Symbol("multiline");
pub(crate) const MIN: Symbol = Symbol("min");
pub(crate) const MAX: Symbol = Symbol("max");

// Variant attributes.
pub(crate) const RENAME: Symbol = Symbol("rename");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
