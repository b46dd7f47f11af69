//! The node-local audit log: every operator action (who, what, the result)
//! and every config write made through the host, appended to a JSON-lines
//! file that stays on this node (it is not replicated: each node records
//! what was asked of it), and the most recent entries kept in memory for
//! `GET /audit` and the status page.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Entries kept in memory (the file keeps all).
pub const RECENT: usize = 200;

/// One audited action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Who: the token that authorized it (by its short fingerprint, never
    /// the token itself), or why nobody was (`no token`, `a wrong token`),
    /// with the client's address when known.
    pub who: String,
    /// What was asked (`POST /actions/failover`, say).
    pub action: String,
    /// Whether it was done.
    pub ok: bool,
    /// What came of it.
    pub result: String,
}

/// A node's audit log.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
    recent: Mutex<VecDeque<AuditEntry>>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .finish()
    }
}

/// How a token appears in the audit log: `token:` and the first 8 hex
/// digits of its SHA-256, enough to tell tokens apart, useless to guess one.
pub fn token_id(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!(
        "token:{}",
        d[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

impl AuditLog {
    /// Opens (creating it if needed) the audit file and reads its last
    /// [`RECENT`] entries back; a line that does not parse (a torn last
    /// write) is skipped.
    pub fn open(path: impl AsRef<Path>) -> std::io::Result<AuditLog> {
        let path = path.as_ref().to_path_buf();
        let mut recent = VecDeque::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                if let Ok(e) = serde_json::from_str::<AuditEntry>(&line?) {
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(e);
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        // A torn last line is closed so the next entry starts on its own.
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            use std::io::{Read, Seek, SeekFrom};
            let mut r = File::open(&path)?;
            r.seek(SeekFrom::Start(len - 1))?;
            r.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(AuditLog {
            path,
            file: Mutex::new(file),
            recent: Mutex::new(recent),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records an action. The line is written and synced before this
    /// returns; a failure to write is logged (the action itself stands).
    pub fn record(&self, who: &str, action: &str, ok: bool, result: &str) {
        let entry = AuditEntry {
            at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            who: who.to_owned(),
            action: action.to_owned(),
            ok,
            result: result.to_owned(),
        };
        tracing::info!(who, action, ok, result, "audit");
        let mut line = serde_json::to_string(&entry).expect("an audit entry serializes");
        line.push('\n');
        {
            let mut f = self.file.lock();
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.sync_data()) {
                tracing::error!(file = %self.path.display(), "cannot write the audit log: {e}");
            }
        }
        let mut r = self.recent.lock();
        if r.len() == RECENT {
            r.pop_front();
        }
        r.push_back(entry);
    }

    /// The most recent entries, oldest first.
    pub fn recent(&self) -> Vec<AuditEntry> {
        self.recent.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_a_torn_line_is_skipped() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        log.record("token:0123abcd", "POST /actions/resync", true, "started");
        log.record("no token", "POST /actions/failover", false, "unauthorized");
        drop(log);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"{\"at_ms\":1,\"who\"")
            .unwrap();
        let log = AuditLog::open(&p).unwrap();
        log.record("token:0123abcd", "POST /actions/handback", true, "done");
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        let r = log.recent();
        assert_eq!(r.len(), 3, "the entry after a torn line is kept");
        assert_eq!(r[0].action, "POST /actions/resync");
        assert!(!r[1].ok);
    }

    #[test]
    fn a_token_appears_by_its_fingerprint_only() {
        let id = token_id("an operator token of the pair");
        assert!(id.starts_with("token:") && id.len() == 14, "{id}");
        assert!(!id.contains("operator"));
        assert_ne!(id, token_id("another operator token"));
    }
}
