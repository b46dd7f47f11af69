//! A panic in any task or thread stops the process with a non-zero status.
//!
//! tokio catches a panic in a spawned task and the task just ends: a node
//! whose task died would go on serving a frozen state (no failover timer, no
//! heartbeats) while the process looks healthy. A program running a node
//! calls [`exit_on_panic`] first thing in `main`; the panic is reported as
//! usual, then the process exits with status 101. Panics the library
//! catches on purpose (a module's runtime state provider that panics is
//! isolated and reported) do not stop it.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    /// Depth of [`catching`] calls on this thread.
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Exit code of a process stopped by a panic.
pub const PANIC_EXIT_CODE: i32 = 101;

/// Installs the panic hook (see the module docs). Call it once, before
/// starting the runtime.
pub fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        if CATCHING.with(Cell::get) == 0 {
            std::process::exit(PANIC_EXIT_CODE);
        }
    }));
}

/// Runs `f`, catching a panic in it without stopping the process.
pub(crate) fn catching<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let r = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get() - 1));
    r
}
