//! Log output: `tracing` events of the gateway and the library, to stderr,
//! human-readable by default or one JSON object per line.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the process's log subscriber: the filter from `RUST_LOG` when it
/// is set, otherwise `level` (from the config). Fails when one is already
/// installed.
pub fn install(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => {
            EnvFilter::try_new(&env).map_err(|e| format!("RUST_LOG `{env}`: {e}"))?
        }
        _ => EnvFilter::try_new(level).map_err(|e| format!("[log] level `{level}`: {e}"))?,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| format!("cannot install the log subscriber: {e}"))
}
