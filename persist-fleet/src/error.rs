//! The fleet layer's errors.

/// What can go wrong in the fleet layer.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The configuration is unusable (names the key).
    #[error("fleet configuration: {0}")]
    Config(String),
    /// A file the configuration names (credentials, NKey seed, fleet key) could not be read.
    #[error("fleet configuration: reading {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// NATS refused or failed an operation (names it).
    #[error("NATS {op}: {reason}")]
    Nats {
        /// What was being done.
        op: &'static str,
        /// The client's error.
        reason: String,
    },
    /// A NATS operation did not finish within its bound.
    #[error("NATS {op}: no answer within {millis} ms")]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The bound.
        millis: u64,
    },
    /// A message or snapshot failed authentication or decoding: it is refused, nothing applied.
    #[error("refused fleet data ({what}): {reason}")]
    Refused {
        /// Which message or object.
        what: String,
        /// Why.
        reason: String,
    },
    /// The edge's shared data does not match the central node's after an entry.
    #[error("fleet digest disagrees at position {position}")]
    Divergence {
        /// The fleet position.
        position: u64,
    },
    /// The store refused or failed.
    #[error("store: {0}")]
    Store(#[from] persist_core::Error),
}

/// The fleet layer's result.
pub type Result<T, E = FleetError> = std::result::Result<T, E>;

/// Runs `f` within `bound`, naming `op` in the error.
pub(crate) async fn bounded<T, E: std::fmt::Display>(
    op: &'static str,
    bound: std::time::Duration,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    match tokio::time::timeout(bound, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(FleetError::Nats {
            op,
            reason: e.to_string(),
        }),
        Err(_) => Err(FleetError::Timeout {
            op,
            millis: bound.as_millis() as u64,
        }),
    }
}
