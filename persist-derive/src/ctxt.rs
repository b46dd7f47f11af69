//! Error collection (serde_derive's `Ctxt`): every stage reports into one context
//! instead of returning at the first problem, so a user sees every bad attribute
//! of a type in a single compile.

use std::cell::RefCell;
use std::fmt::Display;

use quote::ToTokens;

/// Collects the errors of one derive invocation.
pub(crate) struct Ctxt {
    // `None` once `check` has run; the drop guard below relies on it.
    errors: RefCell<Option<Vec<syn::Error>>>,
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Some(Vec::new())),
        }
    }

    /// Records an error spanning the tokens of `obj`.
    pub(crate) fn error_spanned_by<A: ToTokens, T: Display>(&self, obj: A, msg: T) {
        self.syn_error(syn::Error::new_spanned(obj.into_token_stream(), msg));
    }

    /// Records an error produced by syn.
    pub(crate) fn syn_error(&self, err: syn::Error) {
        if let Some(errors) = self.errors.borrow_mut().as_mut() {
            errors.push(err);
        }
    }

    /// Consumes the context: all recorded errors combined into one, if any.
    pub(crate) fn check(self) -> syn::Result<()> {
        let mut errors = self
            .errors
            .borrow_mut()
            .take()
            .unwrap_or_default()
            .into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for rest in errors {
            combined.combine(rest);
        }
        Err(combined)
    }
}

// serde panics here when the errors were never checked, since dropping them would
// silently accept bad input. A panic in a proc macro is a useless error for the
// user, so the guard only runs in this crate's own unit tests, which go through
// every derive path.
#[cfg(test)]
impl Drop for Ctxt {
    fn drop(&mut self) {
        if !std::thread::panicking() && self.errors.borrow().is_some() {
            panic!("persist-derive bug: Ctxt dropped without checking its errors");
        }
    }
}
