//! The gateway's TOML config: parsed, then checked as a whole before
//! anything is created (no database file, no socket) so a mistake costs
//! nothing but a clear message with the key and the line.
//!
//! ```toml
//! [node]
//! id = "gw-a"
//! role = "master"                  # master | backup
//! cluster = "plant-7"
//!
//! [link]
//! listen = "127.0.0.1:8060"        # master: where the backup dials
//! peer = "127.0.0.1:8061"          # backup: the master's address; master: probed for a second master
//! secret_file = "pair.secret"      # required, at least 16 bytes (trailing newlines are not part of it)
//! # tls_cert = "gw-a.pem"  tls_key = "gw-a.key"  tls_ca = "ca.pem"   (mutual TLS, optional)
//!
//! [redundancy]
//! standby = "cold"                 # cold | warm
//! failover_timeout_ms = 3000       # at least two heartbeats
//! heartbeat_ms = 250               # at least 1
//! startup_allowance_ms = 10000     # at least one heartbeat
//! recovery = "automatic"           # automatic | manual
//! reconnect_max_ms = 10000         # backup: longest pause between dials (capped at half
//!                                  # the failover timeout and half the startup allowance)
//!
//! [database]
//! sqlite = "gw-a.db"               # or: postgres_url = "postgres://..."  postgres_schema = "gw_a"
//!
//! [scrub]                          # re-reading the rows against their digests (optional)
//! enabled = true
//! period_ms = 10000                # a row changed behind the library's back is found within it
//! max_core_percent = 25            # 1 to 100: the share of one core a pass may use
//!
//! [status]
//! listen = "127.0.0.1:8080"        # loopback by default; no TLS: put a TLS proxy in front
//! operator_token_file = "operator.token"   # at least 16 characters
//!
//! [log]
//! format = "human"                 # human | json
//! level = "info"                   # a tracing filter; RUST_LOG, when set, wins
//!
//! [audit]
//! file = "gw-a.audit.jsonl"        # node-local; default <node id>.audit.jsonl beside the config
//!
//! [api]                            # the REST API on the status listener (/api/v1, /openapi.json)
//! peer_url = "http://127.0.0.1:8081"   # the other node's status URL, named in not-master answers
//! [[api.token]]                    # any number; none: every API request is refused
//! name = "scada"                   # who, in the audit log
//! role = "read"                    # read (GET) | write (everything)
//! file = "scada.token"             # at least 16 characters, unlike the operator token
//! ```
//!
//! Files named in the config are relative to the config file's directory.
//!
//! # The secret file
//! The link secret is the file's bytes without its trailing line ends (any
//! run of `\n` and `\r` at the end): `echo secret > pair.secret`, an
//! editor's final newline and a file without one give the same secret on
//! both nodes. Anything else, spaces included, is part of the secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use persist::sync::auth::{Secret, MIN_SECRET_LEN};
use persist::sync::engine::ScrubConfig;
use persist::sync::redundancy::{NodeRole, RecoveryMode, RedundancySettings, StandbyLevel};
use serde::Deserialize;
use toml::Spanned;

/// Shortest operator token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// A config mistake: the file, the key, the line when known, and what is
/// wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{}{}: {}{problem}",
    file.display(),
    line.map(|l| format!(", line {l}")).unwrap_or_default(),
    if key.is_empty() { String::new() } else { format!("{key}: ") }
)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// The line of the key (1-based), when known.
    pub line: Option<usize>,
    /// The key, as `[section] key` (empty for a syntax error, whose
    /// message names what is wrong).
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    node: RawNode,
    link: RawLink,
    #[serde(default)]
    redundancy: RawRedundancy,
    database: RawDatabase,
    status: RawStatus,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    scrub: RawScrub,
    /// Checked by persist-fleet's `WitnessConfig` (its keys, its rules).
    witness: Option<Spanned<toml::Table>>,
    /// Checked by persist-fleet's `FleetConfig`.
    fleet: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    peer_url: Option<Spanned<String>>,
    #[serde(default)]
    token: Vec<RawApiToken>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiToken {
    name: Spanned<String>,
    role: ApiRole,
    file: Spanned<PathBuf>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiRole {
    /// Reads only (`GET`).
    Read,
    /// Reads and writes.
    Write,
}

/// One API token (`[[api.token]]`): its name, role and secret.
#[derive(Clone)]
pub struct ApiToken {
    /// Who holds it, as the audit log names them.
    pub name: String,
    /// What it may do.
    pub role: ApiRole,
    /// The token itself (read from its file).
    pub token: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The REST API's settings (`[api]`).
#[derive(Debug, Clone, Default)]
pub struct ApiConfig {
    /// The tokens it accepts.
    pub tokens: Vec<ApiToken>,
    /// The other node's status URL (`http://host:port`), named in the
    /// answer to a write refused on a backup.
    pub peer_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: Spanned<String>,
    role: RoleName,
    cluster: Spanned<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RoleName {
    Master,
    Backup,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    listen: Option<Spanned<String>>,
    peer: Option<Spanned<String>>,
    secret_file: Spanned<PathBuf>,
    tls_cert: Option<Spanned<PathBuf>>,
    tls_key: Option<Spanned<PathBuf>>,
    tls_ca: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRedundancy {
    standby: StandbyName,
    failover_timeout_ms: Spanned<u64>,
    heartbeat_ms: Spanned<u64>,
    startup_allowance_ms: Spanned<u64>,
    recovery: RecoveryName,
    reconnect_max_ms: Spanned<u64>,
}

impl Default for RawRedundancy {
    fn default() -> Self {
        RawRedundancy {
            standby: StandbyName::Cold,
            failover_timeout_ms: Spanned::new(0..0, 3000),
            heartbeat_ms: Spanned::new(0..0, 250),
            startup_allowance_ms: Spanned::new(0..0, 10_000),
            recovery: RecoveryName::Automatic,
            reconnect_max_ms: Spanned::new(0..0, 10_000),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum StandbyName {
    Cold,
    Warm,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RecoveryName {
    Automatic,
    Manual,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScrub {
    enabled: bool,
    period_ms: Spanned<u64>,
    max_core_percent: Spanned<u32>,
}

impl Default for RawScrub {
    fn default() -> Self {
        let d = ScrubConfig::default();
        RawScrub {
            enabled: d.enabled,
            period_ms: Spanned::new(0..0, d.period.as_millis() as u64),
            max_core_percent: Spanned::new(0..0, d.max_core_percent),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    sqlite: Option<Spanned<PathBuf>>,
    postgres_url: Option<Spanned<String>>,
    postgres_schema: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatus {
    listen: Option<Spanned<String>>,
    operator_token_file: Spanned<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    file: Option<PathBuf>,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (the default).
    #[default]
    Human,
    /// One JSON object per line, for a log collector.
    Json,
}

/// Where the node keeps its data.
#[derive(Debug, Clone)]
pub enum Database {
    /// An embedded SQLite file (absolute path).
    Sqlite(PathBuf),
    /// A PostgreSQL server and the schema the node's tables live in.
    Postgres {
        /// The connection URL.
        url: String,
        /// The schema.
        schema: String,
    },
}

/// TLS files of the link, absolute paths.
#[derive(Debug, Clone, Default)]
pub struct LinkTls {
    /// This node's certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA that signs the peer's certificate (PEM).
    pub ca: Option<PathBuf>,
}

/// A checked config: every value valid, every file named in it read.
#[derive(Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// The node's settings, validated.
    pub settings: RedundancySettings,
    /// The pair's cluster name.
    pub cluster: String,
    /// Link: where the master listens.
    pub listen: Option<String>,
    /// Link: the peer's address.
    pub peer: Option<String>,
    /// The link's shared secret.
    pub secret: Secret,
    /// The link's TLS files.
    pub tls: LinkTls,
    /// The backup's longest pause between dials.
    pub reconnect_max: Duration,
    /// The scrubber (`[scrub]`).
    pub scrub: ScrubConfig,
    /// The store.
    pub database: Database,
    /// Where the status page and the operator actions listen.
    pub status_listen: SocketAddr,
    /// The operator token.
    pub operator_token: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter from the config (RUST_LOG, when set, wins).
    pub log_level: String,
    /// The node-local audit log.
    pub audit_file: PathBuf,
    /// The REST API's tokens and the peer's URL.
    pub api: ApiConfig,
    /// The optional witness lease (`[witness]`), checked against the
    /// failover timeout: where it is and the lease's settings.
    pub witness: Option<(
        persist_fleet::WitnessConfig,
        persist::sync::redundancy::witness::WitnessSettings,
    )>,
    /// The fleet (`[fleet]`): a central gateway publishes its shared record
    /// types, an edge (with `edge = "name"`) consumes them.
    pub fleet: Option<persist_fleet::FleetConfig>,
    /// Things that work but should not stay so (a world-readable secret, a
    /// status page off loopback without TLS): logged at start.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("file", &self.file)
            .field("node", &self.settings.node_id)
            .field("role", &self.settings.role)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn line(&self, span: std::ops::Range<usize>) -> Option<usize> {
        if span == (0..0) {
            return None;
        }
        Some(
            self.text[..span.start.min(self.text.len())]
                .lines()
                .count()
                .max(1),
        )
    }

    fn err(
        &self,
        key: &str,
        span: Option<std::ops::Range<usize>>,
        problem: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            line: span.and_then(|s| self.line(s)),
            key: key.to_owned(),
            problem: problem.to_string(),
        }
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn read(&self, key: &str, p: &Spanned<PathBuf>) -> Result<(PathBuf, Vec<u8>), ConfigError> {
        let path = self.path(p.get_ref());
        let bytes = std::fs::read(&path)
            .map_err(|e| self.err(key, Some(p.span()), format!("{}: {e}", path.display())))?;
        Ok((path, bytes))
    }
}

impl Checker<'_> {
    /// A persist-fleet section (`[witness]`, `[fleet]`) as its own TOML,
    /// with the named file keys made relative to the config's directory;
    /// errors name the section's header line.
    fn section<T>(
        &self,
        name: &str,
        raw: &Spanned<toml::Table>,
        files: &[&str],
        check: impl FnOnce(&str) -> persist_fleet::Result<T>,
    ) -> Result<T, ConfigError> {
        let mut table = raw.get_ref().clone();
        for key in files {
            if let Some(toml::Value::String(p)) = table.get(*key) {
                let path = self.path(Path::new(p)).display().to_string();
                table.insert((*key).into(), toml::Value::String(path));
            }
        }
        let header = format!("[{name}]");
        // The header's line (a table's span starts where its header line
        // does, which `line` would count as the line before).
        let line = self
            .text
            .lines()
            .position(|l| l.trim() == header)
            .map(|i| i + 1);
        check(&table.to_string()).map_err(|e| {
            let problem = match e {
                persist_fleet::FleetError::Config(m) => {
                    m.trim_start_matches(&format!("{header} ")).to_owned()
                }
                other => other.to_string(),
            };
            ConfigError {
                line,
                ..self.err(&header, None, problem)
            }
        })
    }

    /// `[witness]`: persist-fleet's keys and rules, the TTL checked against
    /// the failover timeout.
    fn witness(
        &self,
        raw: &Spanned<toml::Table>,
        failover_timeout: Duration,
    ) -> Result<
        (
            persist_fleet::WitnessConfig,
            persist::sync::redundancy::witness::WitnessSettings,
        ),
        ConfigError,
    > {
        self.section("witness", raw, &["credentials_file", "nkey_file"], |text| {
            let cfg = persist_fleet::WitnessConfig::from_toml(text)?;
            let settings = cfg.settings(failover_timeout)?;
            Ok((cfg, settings))
        })
    }

    /// `[fleet]`: persist-fleet's keys and rules, the fleet key read now.
    fn fleet(&self, raw: &Spanned<toml::Table>) -> Result<persist_fleet::FleetConfig, ConfigError> {
        self.section(
            "fleet",
            raw,
            &["key_file", "credentials_file", "nkey_file"],
            |text| {
                let cfg = persist_fleet::FleetConfig::from_toml(text)?;
                cfg.check()?;
                cfg.load_key()?;
                Ok(cfg)
            },
        )
    }

    /// `[api]`: every token file read and checked, names unique, no token
    /// shared with another or with the operator.
    fn api(
        &self,
        raw: &RawApi,
        operator: &str,
        warnings: &mut Vec<String>,
    ) -> Result<ApiConfig, ConfigError> {
        let peer_url = match &raw.peer_url {
            Some(u) => {
                let url = u.get_ref().trim_end_matches('/').to_owned();
                let rest = url
                    .strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                    return Err(self.err(
                        "[api] peer_url",
                        Some(u.span()),
                        format!("`{url}` is not an http:// or https:// URL"),
                    ));
                }
                Some(url)
            }
            None => None,
        };
        let mut tokens: Vec<ApiToken> = Vec::new();
        for t in &raw.token {
            let name = t.name.get_ref().clone();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.err(
                    "[api] token name",
                    Some(t.name.span()),
                    "must be non-empty, without spaces",
                ));
            }
            if tokens.iter().any(|x| x.name == name) {
                return Err(self.err(
                    "[api] token name",
                    Some(t.name.span()),
                    format!("two API tokens are named `{name}`"),
                ));
            }
            let (path, bytes) = self.read("[api] token file", &t.file)?;
            let token = String::from_utf8(bytes)
                .map_err(|_| {
                    self.err(
                        "[api] token file",
                        Some(t.file.span()),
                        format!("{}: not UTF-8 text", path.display()),
                    )
                })?
                .trim()
                .to_owned();
            let problem = if token.len() < MIN_TOKEN_LEN {
                Some(format!(
                    "the API token `{name}` has {} characters; at least {MIN_TOKEN_LEN} are needed",
                    token.len()
                ))
            } else if token == operator {
                Some(format!(
                    "the API token `{name}` is the operator token: give the API its own"
                ))
            } else {
                tokens
                    .iter()
                    .find(|x| x.token == token)
                    .map(|x| format!("the API tokens `{}` and `{name}` are the same", x.name))
            };
            if let Some(problem) = problem {
                return Err(self.err(
                    "[api] token file",
                    Some(t.file.span()),
                    format!("{}: {problem}", path.display()),
                ));
            }
            if world_readable(&path) {
                warnings.push(format!(
                    "[api] token file {} is readable by every user of this machine (chmod 600 it)",
                    path.display()
                ));
            }
            tokens.push(ApiToken {
                name,
                role: t.role,
                token,
            });
        }
        Ok(ApiConfig { tokens, peer_url })
    }
}

/// The `[section] key` of line `line` (1-based), or "" when it holds none.
fn key_at(text: &str, line: usize) -> String {
    let mut section = String::new();
    for (n, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            section = l.split(']').next().unwrap_or("").to_owned() + "]";
        }
        if n + 1 == line {
            return match l.split_once('=') {
                Some((k, _)) if !l.starts_with('[') => format!("{section} {}", k.trim()),
                _ => String::new(),
            };
        }
    }
    String::new()
}

/// Whether others than the owner and the group may read the file.
fn world_readable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// The link secret as the file holds it, without trailing line ends.
pub fn secret_bytes(mut file: Vec<u8>) -> Vec<u8> {
    while matches!(file.last(), Some(b'\n' | b'\r')) {
        file.pop();
    }
    file
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let file = path.as_ref();
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: String::new(),
            problem: e.to_string(),
        })?;
        Config::parse(file, &text)
    }

    /// Checks a config's text; `file` names it in errors and is where
    /// relative paths start from.
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let c = Checker { file, text };
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().and_then(|s| c.line(s));
            ConfigError {
                file: file.to_path_buf(),
                line,
                key: line.map(|l| key_at(text, l)).unwrap_or_default(),
                problem: e.message().to_owned(),
            }
        })?;
        let mut warnings = Vec::new();
        let role = match raw.node.role {
            RoleName::Master => NodeRole::Master,
            RoleName::Backup => NodeRole::Backup,
        };
        let id = raw.node.id.get_ref().clone();
        if id.is_empty() || id.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
            return Err(c.err(
                "[node] id",
                Some(raw.node.id.span()),
                "must be non-empty, without spaces",
            ));
        }
        if raw.node.cluster.get_ref().is_empty() {
            return Err(c.err(
                "[node] cluster",
                Some(raw.node.cluster.span()),
                "must be non-empty",
            ));
        }
        let r = &raw.redundancy;
        let mut settings = RedundancySettings::new(role, id.clone());
        settings.standby = match r.standby {
            StandbyName::Cold => StandbyLevel::Cold,
            StandbyName::Warm => StandbyLevel::Warm,
        };
        settings.failover_timeout = Duration::from_millis(*r.failover_timeout_ms.get_ref());
        settings.heartbeat_interval = Duration::from_millis(*r.heartbeat_ms.get_ref());
        settings.startup_allowance = Duration::from_millis(*r.startup_allowance_ms.get_ref());
        settings.recovery = match r.recovery {
            RecoveryName::Automatic => RecoveryMode::Automatic,
            RecoveryName::Manual => RecoveryMode::Manual,
        };
        if let Err(e) = settings.validate() {
            let (key, span) = match e.setting {
                "heartbeat_interval" => ("[redundancy] heartbeat_ms", r.heartbeat_ms.span()),
                "failover_timeout" => (
                    "[redundancy] failover_timeout_ms",
                    r.failover_timeout_ms.span(),
                ),
                "startup_allowance" => (
                    "[redundancy] startup_allowance_ms",
                    r.startup_allowance_ms.span(),
                ),
                "node_id" => ("[node] id", raw.node.id.span()),
                _ => ("[redundancy]", 0..0),
            };
            return Err(c.err(key, Some(span), e.problem));
        }
        let scrub = {
            let r = &raw.scrub;
            if *r.period_ms.get_ref() < 2 {
                return Err(c.err(
                    "[scrub] period_ms",
                    Some(r.period_ms.span()),
                    "must be at least 2",
                ));
            }
            if !(1..=100).contains(r.max_core_percent.get_ref()) {
                return Err(c.err(
                    "[scrub] max_core_percent",
                    Some(r.max_core_percent.span()),
                    "must be from 1 to 100",
                ));
            }
            ScrubConfig {
                enabled: r.enabled,
                period: Duration::from_millis(*r.period_ms.get_ref()),
                max_core_percent: *r.max_core_percent.get_ref(),
                ..ScrubConfig::default()
            }
        };
        if *r.reconnect_max_ms.get_ref() == 0 {
            return Err(c.err(
                "[redundancy] reconnect_max_ms",
                Some(r.reconnect_max_ms.span()),
                "must be at least 1",
            ));
        }
        let listen = raw.link.listen.as_ref().map(|l| l.get_ref().clone());
        let peer = raw.link.peer.as_ref().map(|p| p.get_ref().clone());
        match role {
            NodeRole::Master if listen.is_none() => {
                return Err(c.err("[link] listen", None, "required on the master"))
            }
            NodeRole::Backup if peer.is_none() => {
                return Err(c.err(
                    "[link] peer",
                    None,
                    "required on the backup (the master's address)",
                ))
            }
            _ => {}
        }
        if let (Some(l), Some(p)) = (&listen, &raw.link.peer) {
            if l == p.get_ref() {
                return Err(c.err(
                    "[link] peer",
                    Some(p.span()),
                    format!(
                        "{l} is this node's own listen address; give the other node's link address"
                    ),
                ));
            }
        }
        let (secret_path, secret_file) = c.read("[link] secret_file", &raw.link.secret_file)?;
        let secret = Secret::new(secret_bytes(secret_file)).map_err(|e| {
            c.err(
                "[link] secret_file",
                Some(raw.link.secret_file.span()),
                format!(
                    "{}: {e} (at least {MIN_SECRET_LEN} bytes, trailing newlines not counted)",
                    secret_path.display()
                ),
            )
        })?;
        if world_readable(&secret_path) {
            warnings.push(format!(
                "[link] secret_file {} is readable by every user of this machine (chmod 600 it)",
                secret_path.display()
            ));
        }
        let tls = LinkTls {
            cert: raw.link.tls_cert.as_ref().map(|p| c.path(p.get_ref())),
            key: raw.link.tls_key.as_ref().map(|p| c.path(p.get_ref())),
            ca: raw.link.tls_ca.as_ref().map(|p| c.path(p.get_ref())),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(c.err(
                "[link] tls_cert",
                raw.link
                    .tls_cert
                    .as_ref()
                    .or(raw.link.tls_key.as_ref())
                    .map(|s| s.span()),
                "tls_cert and tls_key go together",
            ));
        }
        for (key, f) in [
            ("[link] tls_cert", &raw.link.tls_cert),
            ("[link] tls_key", &raw.link.tls_key),
            ("[link] tls_ca", &raw.link.tls_ca),
        ] {
            if let Some(f) = f {
                c.read(key, f)?;
            }
        }
        let database = match (&raw.database.sqlite, &raw.database.postgres_url) {
            (Some(p), None) => Database::Sqlite(c.path(p.get_ref())),
            (None, Some(url)) => Database::Postgres {
                url: url.get_ref().clone(),
                schema: raw
                    .database
                    .postgres_schema
                    .clone()
                    .unwrap_or_else(|| id.replace('-', "_")),
            },
            _ => {
                return Err(c.err(
                    "[database]",
                    None,
                    "give exactly one of `sqlite` or `postgres_url`",
                ))
            }
        };
        let (status_listen, status_span) = match &raw.status.listen {
            Some(s) => (s.get_ref().clone(), Some(s.span())),
            None => ("127.0.0.1:8080".to_owned(), None),
        };
        let status_listen: SocketAddr = status_listen.parse().map_err(|e| {
            c.err(
                "[status] listen",
                status_span.clone(),
                format!("`{status_listen}` is not an address:port ({e})"),
            )
        })?;
        if !status_listen.ip().is_loopback() {
            warnings.push(format!(
                "[status] listen {status_listen} is not loopback: the status page and the \
                 operator token travel without TLS; put a TLS proxy in front"
            ));
        }
        let (token_path, token) = c.read(
            "[status] operator_token_file",
            &raw.status.operator_token_file,
        )?;
        let token = String::from_utf8(token)
            .map_err(|_| {
                c.err(
                    "[status] operator_token_file",
                    Some(raw.status.operator_token_file.span()),
                    format!("{}: not UTF-8 text", token_path.display()),
                )
            })?
            .trim()
            .to_owned();
        if token.len() < MIN_TOKEN_LEN {
            return Err(c.err(
                "[status] operator_token_file",
                Some(raw.status.operator_token_file.span()),
                format!(
                    "{}: the operator token has {} characters; at least {MIN_TOKEN_LEN} are needed",
                    token_path.display(),
                    token.len()
                ),
            ));
        }
        if world_readable(&token_path) {
            warnings.push(format!(
                "[status] operator_token_file {} is readable by every user of this machine \
                 (chmod 600 it)",
                token_path.display()
            ));
        }
        let log_level = match &raw.log.level {
            Some(l) => {
                let text = l.get_ref().clone();
                tracing_subscriber::EnvFilter::try_new(&text)
                    .map_err(|e| c.err("[log] level", Some(l.span()), format!("`{text}`: {e}")))?;
                text
            }
            None => "info".to_owned(),
        };
        let audit_file = c.path(
            raw.audit
                .file
                .as_deref()
                .unwrap_or(Path::new(&format!("{id}.audit.jsonl"))),
        );
        let api = c.api(&raw.api, &token, &mut warnings)?;
        let witness = match &raw.witness {
            Some(t) => Some(c.witness(t, settings.failover_timeout)?),
            None => None,
        };
        let fleet = match &raw.fleet {
            Some(t) => Some(c.fleet(t)?),
            None => None,
        };
        Ok(Config {
            fleet,
            witness,
            api,
            file: file.to_path_buf(),
            settings,
            cluster: raw.node.cluster.get_ref().clone(),
            listen,
            peer,
            secret,
            tls,
            reconnect_max: Duration::from_millis(*r.reconnect_max_ms.get_ref()),
            scrub,
            database,
            status_listen,
            operator_token: token,
            log_format: raw.log.format.unwrap_or_default(),
            log_level,
            audit_file,
            warnings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(tempfile::TempDir);

    impl Dir {
        fn new() -> Dir {
            let d = Dir(tempfile::tempdir().unwrap());
            d.write("pair.secret", "a pair secret of 32 bytes, really\n");
            d.write("operator.token", "an operator token\n");
            d
        }
        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.path().join(name), text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    self.0.path().join(name),
                    std::fs::Permissions::from_mode(0o600),
                )
                .unwrap();
            }
        }
        fn parse(&self, text: &str) -> Result<Config, ConfigError> {
            Config::parse(&self.0.path().join("gw.toml"), text)
        }
    }

    const MASTER: &str = r#"[node]
id = "gw-a"
role = "master"
cluster = "plant-7"

[link]
listen = "127.0.0.1:8060"
secret_file = "pair.secret"

[redundancy]
heartbeat_ms = 250
failover_timeout_ms = 3000

[database]
sqlite = "gw-a.db"

[status]
operator_token_file = "operator.token"
"#;

    #[test]
    fn a_valid_config_is_read_with_defaults() {
        let d = Dir::new();
        let c = d.parse(MASTER).unwrap();
        assert_eq!(c.settings.node_id, "gw-a");
        assert_eq!(c.status_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.log_format, LogFormat::Human);
        assert!(c.audit_file.ends_with("gw-a.audit.jsonl"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // Nothing was created: the database is opened later.
        assert!(!d.0.path().join("gw-a.db").exists());
    }

    #[test]
    fn the_scrub_section_sets_the_scrubber_and_names_a_bad_value() {
        let d = Dir::new();
        assert_eq!(d.parse(MASTER).unwrap().scrub, ScrubConfig::default());
        let c = d
            .parse(&format!(
                "{MASTER}\n[scrub]\nperiod_ms = 60000\nmax_core_percent = 10\n"
            ))
            .unwrap();
        assert_eq!(c.scrub.period, Duration::from_secs(60));
        assert_eq!(c.scrub.max_core_percent, 10);
        assert!(c.scrub.enabled);
        let off = d
            .parse(&format!("{MASTER}\n[scrub]\nenabled = false\n"))
            .unwrap();
        assert!(!off.scrub.enabled);
        let e = d
            .parse(&format!("{MASTER}\n[scrub]\nmax_core_percent = 0\n"))
            .unwrap_err();
        assert_eq!(e.key, "[scrub] max_core_percent");
        assert_eq!(e.line, Some(21), "{e}");
        let e = d
            .parse(&format!("{MASTER}\n[scrub]\nperiod = 5\n"))
            .unwrap_err();
        assert!(e.to_string().contains("period"), "{e}");
    }

    #[test]
    fn the_witness_section_is_checked_against_the_failover_timeout() {
        let d = Dir::new();
        let witness = "\n[witness]\nurl = \"nats://127.0.0.1:4222\"\nbucket = \"pair-witness\"\nkey = \"line-7\"\nttl_ms = 2000\n";
        let c = d.parse(&format!("{MASTER}{witness}")).unwrap();
        let (w, s) = c.witness.unwrap();
        assert_eq!((w.key.as_str(), s.ttl), ("line-7", Duration::from_secs(2)));
        assert!(d.parse(MASTER).unwrap().witness.is_none());
        // A TTL at the failover timeout: named, with the section's line.
        let e = d
            .parse(&format!("{MASTER}{}", witness.replace("2000", "3000")))
            .unwrap_err();
        assert_eq!(e.key, "[witness]");
        assert_eq!(e.line, Some(20), "{e}");
        assert!(
            e.problem.contains("shorter than the failover timeout"),
            "{e}"
        );
        // Files are relative to the config; a missing one is named.
        let e = d
            .parse(&format!(
                "{MASTER}{witness}credentials_file = \"w.creds\"\n"
            ))
            .unwrap_err();
        assert!(
            e.problem.contains("credentials_file") && e.problem.contains("no such file"),
            "{e}"
        );
        d.write("w.creds", "creds");
        let c = d
            .parse(&format!(
                "{MASTER}{witness}credentials_file = \"w.creds\"\n"
            ))
            .unwrap();
        assert!(c.witness.unwrap().0.credentials_file.unwrap().is_absolute());
        // A key persist-fleet does not know.
        let e = d
            .parse(&format!("{MASTER}{witness}password = \"x\"\n"))
            .unwrap_err();
        assert!(e.problem.contains("password"), "{e}");
    }

    #[test]
    fn the_fleet_section_reads_its_key_relative_to_the_config() {
        let d = Dir::new();
        let fleet = "\n[fleet]\nurl = \"nats://127.0.0.1:4222\"\ncluster = \"plant-group\"\nedge = \"site-7\"\nkey_file = \"fleet.key\"\nshared = [\"device\"]\n";
        let e = d.parse(&format!("{MASTER}{fleet}")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("[fleet]", Some(20)), "{e}");
        assert!(e.problem.contains("fleet.key"), "{e}");
        d.write("fleet.key", &"ab".repeat(32));
        let c = d.parse(&format!("{MASTER}{fleet}")).unwrap().fleet.unwrap();
        assert!(c.key_file.is_absolute() && c.is_shared("device"));
        assert_eq!(c.edge.as_deref(), Some("site-7"));
        let e = d
            .parse(&format!("{MASTER}{}", fleet.replace("site-7", "site 7")))
            .unwrap_err();
        assert!(e.problem.contains("edge"), "{e}");
    }

    #[test]
    fn api_tokens_are_read_from_files_and_checked() {
        let d = Dir::new();
        d.write("scada.token", "a read token for scada\n");
        d.write("tool.token", "a write token for the tool\n");
        let api = r#"
[api]
peer_url = "http://127.0.0.1:8081/"
[[api.token]]
name = "scada"
role = "read"
file = "scada.token"
[[api.token]]
name = "tool"
role = "write"
file = "tool.token"
"#;
        let c = d.parse(&format!("{MASTER}{api}")).unwrap();
        assert_eq!(c.api.peer_url.as_deref(), Some("http://127.0.0.1:8081"));
        let t: Vec<_> = c
            .api
            .tokens
            .iter()
            .map(|t| (t.name.as_str(), t.role, t.token.as_str()))
            .collect();
        assert_eq!(
            t,
            [
                ("scada", ApiRole::Read, "a read token for scada"),
                ("tool", ApiRole::Write, "a write token for the tool")
            ]
        );
        // The secret never shows in a debug print.
        assert!(!format!("{:?}", c.api).contains("read token"));
        // Without [api]: no tokens.
        assert!(d.parse(MASTER).unwrap().api.tokens.is_empty());
        // The operator's token, a shared one, a short one, a duplicate name,
        // an unknown role, an inline secret, a bad URL: each named.
        d.write("op.token", "an operator token\n");
        d.write("short.token", "short\n");
        let one = |name: &str, role: &str, file: &str| {
            format!("{MASTER}\n[[api.token]]\nname = \"{name}\"\nrole = \"{role}\"\nfile = \"{file}\"\n")
        };
        let e = d.parse(&one("x", "read", "op.token")).unwrap_err();
        assert!(e.to_string().contains("is the operator token"), "{e}");
        assert_eq!(e.key, "[api] token file");
        let e = d.parse(&one("x", "read", "short.token")).unwrap_err();
        assert!(e.to_string().contains("at least 16"), "{e}");
        let e = d.parse(&one("x", "admin", "tool.token")).unwrap_err();
        assert!(e.to_string().contains("admin"), "{e}");
        let e = d.parse(&one("x", "read", "missing.token")).unwrap_err();
        assert!(e.to_string().contains("missing.token"), "{e}");
        let twice = format!(
            "{}\n[[api.token]]\nname = \"x\"\nrole = \"write\"\nfile = \"tool.token\"\n",
            one("x", "read", "scada.token")
        );
        assert!(d
            .parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("two API tokens"));
        let shared = twice
            .replace(
                "name = \"x\"\nrole = \"write\"",
                "name = \"y\"\nrole = \"write\"",
            )
            .replace("tool.token", "scada.token");
        assert!(d
            .parse(&shared)
            .unwrap_err()
            .to_string()
            .contains("are the same"));
        let inline = format!("{MASTER}\n[[api.token]]\nname = \"x\"\nrole = \"read\"\ntoken = \"inline secret here\"\n");
        assert!(d.parse(&inline).is_err());
        let url = format!("{MASTER}\n[api]\npeer_url = \"127.0.0.1:8081\"\n");
        let e = d.parse(&url).unwrap_err();
        assert_eq!(e.key, "[api] peer_url", "{e}");
    }

    #[test]
    fn a_zero_heartbeat_names_the_key_and_the_line() {
        let d = Dir::new();
        let e = d
            .parse(&MASTER.replace("heartbeat_ms = 250", "heartbeat_ms = 0"))
            .unwrap_err();
        assert_eq!(e.key, "[redundancy] heartbeat_ms");
        assert_eq!(e.line, Some(11), "{e}");
        assert!(
            e.to_string()
                .contains("gw.toml, line 11: [redundancy] heartbeat_ms"),
            "{e}"
        );
    }

    #[test]
    fn a_failover_timeout_below_two_heartbeats_is_refused() {
        let d = Dir::new();
        let e = d
            .parse(&MASTER.replace("failover_timeout_ms = 3000", "failover_timeout_ms = 300"))
            .unwrap_err();
        assert_eq!(e.key, "[redundancy] failover_timeout_ms");
        assert_eq!(e.line, Some(12));
    }

    #[test]
    fn a_short_operator_token_is_refused_at_start() {
        let d = Dir::new();
        d.write("operator.token", "short\n");
        let e = d.parse(MASTER).unwrap_err();
        assert_eq!(e.key, "[status] operator_token_file");
        assert!(e.problem.contains("5 characters; at least 16"), "{e}");
        d.write("operator.token", "");
        assert!(d.parse(MASTER).is_err());
    }

    #[test]
    fn trailing_newlines_are_not_part_of_the_secret() {
        assert_eq!(secret_bytes(b"pair secret\r\n\n".to_vec()), b"pair secret");
        assert_eq!(secret_bytes(b"pair secret".to_vec()), b"pair secret");
        assert_eq!(secret_bytes(b"pair secret \n".to_vec()), b"pair secret ");
        let d = Dir::new();
        d.write("pair.secret", "a pair secret of 32 bytes, really\r\n\n");
        d.parse(MASTER).unwrap();
        // Sixteen bytes with the newline, fifteen without: too short.
        d.write("pair.secret", "fifteen bytes..\n");
        let e = d.parse(MASTER).unwrap_err();
        assert_eq!(e.key, "[link] secret_file");
        assert!(e.problem.contains("trailing newlines not counted"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_world_readable_secret_and_a_public_status_address_are_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let d = Dir::new();
        std::fs::set_permissions(
            d.0.path().join("pair.secret"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let c = d
            .parse(&MASTER.replace(
                "operator_token_file",
                "listen = \"0.0.0.0:8080\"\noperator_token_file",
            ))
            .unwrap();
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("readable by every user"));
        assert!(c.warnings[1].contains("not loopback"));
    }

    #[test]
    fn mistakes_name_their_key() {
        let d = Dir::new();
        let cases = [
            (MASTER.replace("id = \"gw-a\"", "id = \"\""), "[node] id"),
            (
                MASTER.replace(
                    "listen = \"127.0.0.1:8060\"",
                    "listen = \"127.0.0.1:8060\"\npeer = \"127.0.0.1:8060\"",
                ),
                "[link] peer",
            ),
            (MASTER.replace("sqlite = \"gw-a.db\"", ""), "[database]"),
            (
                MASTER.replace("pair.secret", "missing.secret"),
                "[link] secret_file",
            ),
            (
                MASTER.replace("[status]", "[status]\nlisten = \"localhost\""),
                "[status] listen",
            ),
            (
                format!("{MASTER}\n[log]\nlevel = \"info,,=\"\n"),
                "[log] level",
            ),
            (
                MASTER.replace("role = \"master\"", "role = \"boss\""),
                "[node] role",
            ),
            (
                MASTER.replace("heartbeat_ms = 250", "heartbeat_ms = \"fast\""),
                "[redundancy] heartbeat_ms",
            ),
            (
                MASTER.replace("listen = \"127.0.0.1:8060\"\n", ""),
                "[link] listen",
            ),
        ];
        for (text, key) in cases {
            let e = d.parse(&text).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }
}
