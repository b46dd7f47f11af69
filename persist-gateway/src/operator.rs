//! The operator surface of a node, over HTTP: the redundancy state as JSON
//! (`GET /state`), Prometheus metrics (`GET /metrics`), a status page that
//! shows the pair at a glance (`GET /`), and operator actions that need the
//! operator token (`POST /actions/resync`, `/actions/failover`,
//! `/actions/handback`, with `Authorization: Bearer <token>`).
//!
//! It listens where it is told (loopback by default in the `gateway`
//! program); put it behind TLS termination if it must be reached remotely.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use persist::module::ModuleManifest;
use persist::sync::redundancy::{ActivityLevel, NodeHandle, NodeRole};
use serde::Serialize;

use crate::audit::{token_id, AuditEntry, AuditLog};
pub use crate::config::MIN_TOKEN_LEN;

struct Shared {
    node_id: String,
    node: Arc<NodeHandle>,
    token: String,
    audit: Option<Arc<AuditLog>>,
    modules: Vec<ModuleManifest>,
}

/// What the operator surface serves: a node, its operator token, and
/// optionally its audit log and modules.
pub struct Surface {
    /// The node's id.
    pub node_id: String,
    /// The node.
    pub node: Arc<NodeHandle>,
    /// The operator token (at least [`MIN_TOKEN_LEN`] characters).
    pub token: String,
    /// Where operator actions are recorded (`GET /audit`).
    pub audit: Option<Arc<AuditLog>>,
    /// The modules the node runs, shown on `/state` and the status page.
    pub modules: Vec<ModuleManifest>,
}

/// The state as served at `GET /state`.
#[derive(Debug, Clone, Serialize)]
pub struct StateView {
    /// This node's id.
    pub node_id: String,
    /// Role: `Master`, `Backup` or `Independent`.
    pub role: String,
    /// Activity: `Undecided`, `Cold`, `Warm` or `Active`.
    pub activity: String,
    /// The pair's epoch.
    pub epoch: u64,
    /// The active node, as this node knows it.
    pub active_node: Option<String>,
    /// Whether the peer is connected.
    pub peer_connected: bool,
    /// The peer, when connected.
    pub peer: Option<String>,
    /// Last log position here.
    pub position: u64,
    /// On the master: the backup's acknowledged position.
    pub peer_acked: u64,
    /// Log entries not yet on the other node.
    pub pending_updates: u64,
    /// When the pair was last in sync (milliseconds since the Unix epoch).
    pub last_sync_ms: Option<u64>,
    /// Full resyncs so far.
    pub resyncs: u64,
    /// Snapshot in progress: rows done and total.
    pub snapshot_progress: Option<(u64, u64)>,
    /// The last error.
    pub last_error: Option<String>,
    /// The state digest here.
    pub digest: String,
    /// Runtime state providers that failed, with their last error.
    pub runtime_errors: Vec<String>,
    /// Runtime state updates held in the bounded queues.
    pub runtime_queued: usize,
    /// Changes of activity, epoch or active node since the node started.
    pub transitions: u64,
    /// The modules this node runs (name and version).
    pub modules: Vec<String>,
    /// The modules the connected peer runs (name and version).
    pub peer_modules: Vec<String>,
    /// Modules whose versions differ between the nodes, with the same
    /// records (replication goes on; an upgrade in progress, say).
    pub module_warnings: Vec<String>,
    /// On the master: clients that connected to the link port and failed
    /// before authenticating (they do not change `last_error`).
    pub unauthenticated_failures: u64,
    /// The witness lease, when the pair has a witness: who holds it as
    /// last answered, and whether this node's lease counts now.
    pub witness_holder: Option<String>,
    /// Whether this node holds the witness lease now (`false` without a
    /// witness).
    pub witness_held_here: bool,
    /// Why the witness is unreachable, while it is.
    pub witness_error: Option<String>,
    /// Whether the pair has a witness.
    pub witness: bool,
    /// What the scrubber found and did (re-reading the rows against their
    /// digests, repairing a backup's ranges).
    pub scrub: ScrubView,
}

/// The scrubber's report, as served in [`StateView::scrub`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScrubView {
    /// Passes completed since the node started.
    pub passes: u64,
    /// How long the last pass took, in milliseconds.
    pub last_pass_ms: Option<u64>,
    /// The longest a row changed behind the library's back can go unseen
    /// at the current pace, in milliseconds (at most the scrub period
    /// unless the core share capped the pace).
    pub finds_within_ms: Option<u64>,
    /// Ranges whose rows did not match their digest in the last pass.
    pub differing_ranges: usize,
    /// Passes that found such ranges.
    pub alarms: u64,
    /// Repairs done (backup: applied; master: answered with rows).
    pub repairs: u64,
    /// Rows shipped by repairs.
    pub rows_shipped: u64,
    /// Backup: rows its repairs changed.
    pub rows_repaired: u64,
    /// Backup: repairs rolled back because rows moved meanwhile.
    pub repair_failures: u64,
    /// The master's own rows do not match its digest: nothing from those
    /// ranges is shipped until an operator decides.
    pub master_diverged: Option<String>,
    /// The recorded ranges are unknown (the rows did not match the digest
    /// when the store opened): scrubbing cannot tell where until a resync.
    pub untrusted: bool,
    /// The last scrub failure, if the last pass failed.
    pub error: Option<String>,
}

impl From<&persist::sync::engine::ScrubStatus> for ScrubView {
    fn from(s: &persist::sync::engine::ScrubStatus) -> Self {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        ScrubView {
            passes: s.passes,
            last_pass_ms: s.last_pass_took.map(ms),
            finds_within_ms: s.finds_within.map(ms),
            differing_ranges: s.differing_ranges,
            alarms: s.alarms,
            repairs: s.repairs,
            rows_shipped: s.rows_shipped,
            rows_repaired: s.rows_repaired,
            repair_failures: s.repair_failures,
            master_diverged: s.master_diverged.clone(),
            untrusted: s.untrusted,
            error: s.error.clone(),
        }
    }
}

/// Builds the state view of a node.
pub fn view(node_id: &str, node: &NodeHandle) -> StateView {
    let s = node.state();
    let link = node
        .master()
        .map(|m| m.status())
        .or_else(|| node.backup().map(|b| b.status()))
        .unwrap_or_default();
    StateView {
        node_id: node_id.to_owned(),
        role: format!("{:?}", s.role),
        activity: format!("{:?}", s.activity),
        epoch: s.epoch,
        active_node: s.active_node,
        peer_connected: s.peer_connected,
        peer: link.peer,
        position: node.store().position(),
        peer_acked: link.peer_acked,
        pending_updates: s.pending_updates,
        last_sync_ms: s
            .last_sync
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64),
        resyncs: link.resyncs,
        snapshot_progress: link.snapshot_progress,
        last_error: s.last_error,
        digest: node.store().digest().to_string(),
        runtime_errors: node
            .runtime()
            .map(|r| {
                r.errors()
                    .into_iter()
                    .map(|(id, (n, e))| format!("{id}: {e} ({n} times)"))
                    .collect()
            })
            .unwrap_or_default(),
        runtime_queued: node.runtime().map_or(0, |r| r.queued()),
        transitions: s.transitions,
        modules: Vec::new(),
        peer_modules: s
            .peer_modules
            .iter()
            .map(|m| format!("{} {}", m.name, m.version))
            .collect(),
        module_warnings: s.module_warnings.clone(),
        unauthenticated_failures: link.unauthenticated_failures,
        witness: s.witness.is_some(),
        witness_holder: s.witness.as_ref().and_then(|w| w.holder.clone()),
        witness_held_here: s.witness.as_ref().is_some_and(|w| w.held_here),
        witness_error: s.witness.and_then(|w| w.error),
        scrub: ScrubView::from(&link.scrub),
    }
}

fn view_of(s: &Shared) -> StateView {
    let mut v = view(&s.node_id, &s.node);
    v.modules = s
        .modules
        .iter()
        .map(|m| format!("{} {}", m.name, m.version))
        .collect();
    v
}

fn activity_number(a: &str) -> u8 {
    match a {
        "Cold" => 1,
        "Warm" => 2,
        "Active" => 3,
        _ => 0,
    }
}

/// The Prometheus text exposition of a state view.
pub fn metrics(v: &StateView) -> String {
    let mut m = String::new();
    let mut gauge =
        |name: &str, help: &str, value: String| metric(&mut m, v, "gauge", name, help, &value);
    gauge(
        "persist_role",
        "Configured role: 0 independent, 1 master, 2 backup.",
        match v.role.as_str() {
            "Master" => "1",
            "Backup" => "2",
            _ => "0",
        }
        .into(),
    );
    gauge(
        "persist_activity_level",
        "Activity: 0 undecided, 1 cold, 2 warm, 3 active.",
        activity_number(&v.activity).to_string(),
    );
    gauge(
        "persist_epoch",
        "The pair's epoch as this node knows it.",
        v.epoch.to_string(),
    );
    if v.witness {
        gauge(
            "persist_witness_lease_held",
            "1 while this node's witness lease counts, else 0.",
            u8::from(v.witness_held_here).to_string(),
        );
        gauge(
            "persist_witness_reachable",
            "1 while the witness answers this node, else 0.",
            u8::from(v.witness_error.is_none()).to_string(),
        );
    }
    gauge(
        "persist_redundancy_transitions",
        "Changes of activity, epoch or active node since the node started.",
        v.transitions.to_string(),
    );
    gauge(
        "persist_log_position",
        "Last log position in this node's store.",
        v.position.to_string(),
    );
    gauge(
        "persist_peer_acked_position",
        "On the master: the backup's acknowledged position.",
        v.peer_acked.to_string(),
    );
    gauge(
        "persist_pending_updates",
        "Log entries not yet on the other node (the replication lag in entries).",
        v.pending_updates.to_string(),
    );
    gauge(
        "persist_peer_connected",
        "1 while the peer is connected.",
        u8::from(v.peer_connected).to_string(),
    );
    gauge(
        "persist_last_sync_timestamp_seconds",
        "When the pair was last in sync.",
        v.last_sync_ms
            .map_or("0".into(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    gauge(
        "persist_resyncs_total",
        "Full resyncs so far.",
        v.resyncs.to_string(),
    );
    gauge(
        "persist_runtime_state_queued_updates",
        "Runtime state updates held in the bounded queues.",
        v.runtime_queued.to_string(),
    );
    gauge(
        "persist_runtime_state_failing_providers",
        "Runtime state providers that reported an error.",
        v.runtime_errors.len().to_string(),
    );
    let sc = &v.scrub;
    gauge(
        "persist_scrub_master_diverged",
        "1 while the master's own rows do not match its digest (nothing from those ranges is shipped).",
        u8::from(sc.master_diverged.is_some()).to_string(),
    );
    gauge(
        "persist_scrub_differing_ranges",
        "Ranges whose rows did not match their digest in the last scrub pass.",
        sc.differing_ranges.to_string(),
    );
    gauge(
        "persist_scrub_finds_within_seconds",
        "The longest a row changed behind the library's back can go unseen at the scrubber's pace.",
        sc.finds_within_ms
            .map_or("0".into(), |ms| format!("{:.3}", ms as f64 / 1000.0)),
    );
    for (name, help, value) in [
        (
            "persist_scrub_passes_total",
            "Scrub passes completed.",
            sc.passes,
        ),
        (
            "persist_scrub_alarms_total",
            "Scrub passes that found ranges at odds with their digest.",
            sc.alarms,
        ),
        (
            "persist_scrub_repairs_total",
            "Ranged repairs (backup: applied; master: answered).",
            sc.repairs,
        ),
        (
            "persist_scrub_rows_shipped_total",
            "Rows shipped by ranged repairs.",
            sc.rows_shipped,
        ),
        (
            "persist_scrub_rows_repaired_total",
            "Backup: rows ranged repairs changed.",
            sc.rows_repaired,
        ),
        (
            "persist_unauthenticated_failures_total",
            "Clients that connected to the link port and failed before authenticating.",
            v.unauthenticated_failures,
        ),
    ] {
        metric(&mut m, v, "counter", name, help, &value);
    }
    m
}

/// Appends one metric of `kind` (`gauge`, `counter`), labelled with the node.
fn metric(
    m: &mut String,
    v: &StateView,
    kind: &str,
    name: &str,
    help: &str,
    value: &dyn std::fmt::Display,
) {
    m.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node=\"{}\"}} {value}\n",
        v.node_id
    ));
}

/// "3.2 s ago" for a time in milliseconds since the Unix epoch.
fn ago(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!("{:.1} s ago", now.saturating_sub(ms) as f64 / 1000.0)
}

/// Escapes text for HTML (the status and fleet pages).
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The human status page, with the most recent audit entries.
pub fn page(v: &StateView, audit: &[AuditEntry]) -> String {
    let color = match v.activity.as_str() {
        "Active" => "#1b7f3b",
        "Warm" => "#b7791f",
        "Cold" => "#2b6cb0",
        _ => "#718096",
    };
    let row = |k: &str, val: String| format!("<tr><th>{k}</th><td>{}</td></tr>", esc(&val));
    let progress = v
        .snapshot_progress
        .map(|(d, t)| format!("{d} / {t} rows"))
        .unwrap_or_else(|| "-".into());
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>persist: {id}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#1a202c;background:#f7fafc}}
.badge{{display:inline-block;padding:.3rem .8rem;border-radius:1rem;color:#fff;font-weight:600;background:{color}}}
table{{border-collapse:collapse;margin-top:1rem;background:#fff}} th,td{{text-align:left;padding:.4rem 1rem;border-bottom:1px solid #e2e8f0}}
th{{color:#4a5568;font-weight:500}} .err{{color:#c53030}} .warn{{color:#975a16}}
</style></head><body>
<h1>{id} <span class="badge">{role} · {activity}</span></h1>
<p>Active node: <b>{active}</b> · epoch {epoch} · peer {peer}</p>
<table>{rows}</table>
{err}
{warnings}
{audit}
<p style="color:#718096">Operator actions: POST /actions/resync, /actions/failover, /actions/handback with the operator token. Refreshes every 2 s.</p>
</body></html>"#,
        id = esc(&v.node_id),
        role = esc(&v.role),
        activity = esc(&v.activity),
        active = esc(v.active_node.as_deref().unwrap_or("undecided")),
        epoch = v.epoch,
        peer = if v.peer_connected {
            format!("connected ({})", esc(v.peer.as_deref().unwrap_or("?")))
        } else {
            "not connected".into()
        },
        rows = [
            row("log position", v.position.to_string()),
            row("acknowledged by the backup", v.peer_acked.to_string()),
            row("pending updates", v.pending_updates.to_string()),
            row("last in sync", v.last_sync_ms.map_or("never".into(), ago)),
            row("full resyncs", v.resyncs.to_string()),
            row("snapshot in progress", progress),
            row("digest", v.digest.clone()),
            row("modules", list(&v.modules)),
            row("the peer's modules", list(&v.peer_modules)),
            row(
                "unauthenticated link clients failed",
                v.unauthenticated_failures.to_string(),
            ),
            row("witness lease", witness_line(v)),
            row("scrub", scrub_line(&v.scrub)),
        ]
        .join(""),
        audit = audit_table(audit),
        warnings = v
            .module_warnings
            .iter()
            .map(|w| format!("<p class=\"warn\">{}</p>", esc(w)))
            .collect::<String>(),
        err = [
            v.last_error
                .as_deref()
                .map(|e| format!("<p class=\"err\">Last error: {}</p>", esc(e))),
            v.scrub.master_diverged.as_deref().map(|e| {
                format!(
                    "<p class=\"err\">The master's rows do not match its own digest: {}. \
                     Nothing from those ranges is shipped until an operator decides \
                     (for example a resync from the node that is right).</p>",
                    esc(e)
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect::<String>(),
    )
}

/// The scrub row of the status page (escaped by `row`).
fn scrub_line(s: &ScrubView) -> String {
    if s.passes == 0 && s.error.is_none() {
        return "no pass yet".into();
    }
    let mut parts = vec![format!(
        "{} passes, last {} ms",
        s.passes,
        s.last_pass_ms.unwrap_or(0)
    )];
    if let Some(ms) = s.finds_within_ms {
        parts.push(format!("a change found within {:.1} s", ms as f64 / 1000.0));
    }
    if s.differing_ranges > 0 {
        parts.push(format!("{} ranges differ", s.differing_ranges));
    }
    if s.alarms > 0 {
        parts.push(format!("{} alarms", s.alarms));
    }
    if s.repairs > 0 {
        parts.push(format!(
            "{} repairs ({} rows shipped, {} repaired)",
            s.repairs, s.rows_shipped, s.rows_repaired
        ));
    }
    if s.untrusted {
        parts.push("ranges unknown until a resync".into());
    }
    if let Some(e) = &s.error {
        parts.push(format!("last pass failed: {e}"));
    }
    parts.join("; ")
}

/// The witness row of the status page (escaped by `row`).
fn witness_line(v: &StateView) -> String {
    if !v.witness {
        return "no witness".into();
    }
    let holder = match (&v.witness_holder, v.witness_held_here) {
        (_, true) => "held here".to_owned(),
        (Some(h), false) => format!("held by {h}"),
        (None, false) => "not held".to_owned(),
    };
    match &v.witness_error {
        Some(e) => format!("{holder}; witness unreachable: {e}"),
        None => holder,
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(", ")
    }
}

/// The last audit entries, newest first, as a table.
fn audit_table(audit: &[AuditEntry]) -> String {
    if audit.is_empty() {
        return String::new();
    }
    let rows: String = audit
        .iter()
        .rev()
        .take(10)
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                ago(e.at_ms),
                esc(&e.who),
                esc(&e.action),
                if e.ok { "" } else { "err" },
                esc(&e.result)
            )
        })
        .collect();
    format!("<h2>Operator actions</h2><table><tr><th>when</th><th>who</th><th>what</th><th>result</th></tr>{rows}</table>")
}

/// Who is asking: the token's fingerprint when it is the operator token,
/// otherwise why not.
fn caller(shared: &Shared, headers: &HeaderMap) -> Result<String, &'static str> {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err("no token");
    };
    // Constant-time comparison: the token's content must not leak through timing.
    let (a, b) = (given.as_bytes(), shared.token.as_bytes());
    if a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0 {
        Ok(token_id(&shared.token))
    } else {
        Err("a wrong token")
    }
}

/// Runs an operator action: checks the token, records who asked what and
/// what came of it in the audit log.
async fn audited<F>(s: &Shared, headers: &HeaderMap, what: &str, run: F) -> Response
where
    F: std::future::Future<Output = (bool, String)>,
{
    let who = match caller(s, headers) {
        Ok(who) => who,
        Err(why) => {
            if let Some(a) = &s.audit {
                a.record(why, what, false, "refused: operator token required");
            }
            return denied();
        }
    };
    let (ok, message) = run.await;
    if let Some(a) = &s.audit {
        a.record(&who, what, ok, &message);
    }
    action(ok, message)
}

#[derive(Serialize)]
struct ActionResult {
    ok: bool,
    message: String,
}

fn action(ok: bool, message: impl Into<String>) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (
        status,
        Json(ActionResult {
            ok,
            message: message.into(),
        }),
    )
        .into_response()
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(ActionResult {
            ok: false,
            message: "operator token required (Authorization: Bearer ...)".into(),
        }),
    )
        .into_response()
}

async fn state(State(s): State<Arc<Shared>>) -> Json<StateView> {
    Json(view_of(&s))
}

async fn audit(State(s): State<Arc<Shared>>) -> Json<Vec<AuditEntry>> {
    Json(s.audit.as_ref().map(|a| a.recent()).unwrap_or_default())
}

async fn prometheus(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics(&view_of(&s)),
    )
}

async fn status_page(State(s): State<Arc<Shared>>) -> Html<String> {
    let audit = s.audit.as_ref().map(|a| a.recent()).unwrap_or_default();
    Html(page(&view_of(&s), &audit))
}

async fn resync(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    audited(&s, &headers, "POST /actions/resync", async {
        if let Some(b) = s.node.backup() {
            b.request_resync();
            (true, "full resync requested from the master".to_owned())
        } else if let Some(m) = s.node.master() {
            if s.node.state().peer_connected {
                m.request_resync();
                (
                    true,
                    "full resync of the connected backup started".to_owned(),
                )
            } else {
                (
                    false,
                    "no backup is connected: nothing to resync (the backup gets a full \
                     resync when it connects, if it needs one)"
                        .to_owned(),
                )
            }
        } else {
            (false, "no sync link on this node".to_owned())
        }
    })
    .await
}

async fn failover(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    audited(&s, &headers, "POST /actions/failover", async {
        match s.node.request_switchover().await {
            Ok(()) => (true, "switchover: the backup takes over".to_owned()),
            Err(e) => (false, e.to_string()),
        }
    })
    .await
}

async fn handback(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    audited(&s, &headers, "POST /actions/handback", async {
        match s.node.request_handback().await {
            Ok(()) => (true, "handback: the master takes over again".to_owned()),
            Err(e) => (false, e.to_string()),
        }
    })
    .await
}

/// Serves the operator surface of `node` on `listener` until the task is
/// dropped, without an audit log. Refuses an operator token shorter than
/// [`MIN_TOKEN_LEN`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    node_id: String,
    node: Arc<NodeHandle>,
    token: String,
) -> std::io::Result<()> {
    serve_surface(
        listener,
        Surface {
            node_id,
            node,
            token,
            audit: None,
            modules: Vec::new(),
        },
    )
    .await
}

/// Serves an operator surface on `listener` until the task is dropped.
/// Refuses an operator token shorter than [`MIN_TOKEN_LEN`].
pub async fn serve_surface(
    listener: tokio::net::TcpListener,
    surface: Surface,
) -> std::io::Result<()> {
    let app = surface_router(surface)?;
    crate::http::serve_bounded(listener, app, crate::http::HttpLimits::default()).await
}

/// The operator surface's routes, to serve alone ([`serve_surface`]) or
/// with others (the gateway adds the REST API). Refuses an operator token
/// shorter than [`MIN_TOKEN_LEN`].
pub fn surface_router(surface: Surface) -> std::io::Result<Router> {
    if surface.token.len() < MIN_TOKEN_LEN {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the operator token must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    let shared = Arc::new(Shared {
        node_id: surface.node_id,
        node: surface.node,
        token: surface.token,
        audit: surface.audit,
        modules: surface.modules,
    });
    let app = Router::new()
        .route("/", get(status_page))
        .route("/state", get(state))
        .route("/metrics", get(prometheus))
        .route("/audit", get(audit))
        .route("/actions/resync", post(resync))
        .route("/actions/failover", post(failover))
        .route("/actions/handback", post(handback))
        .with_state(shared);
    Ok(app)
}

/// Activity as a number (0 undecided .. 3 active), for tools.
pub fn activity_level(a: ActivityLevel) -> u8 {
    match a {
        ActivityLevel::Undecided => 0,
        ActivityLevel::Cold => 1,
        ActivityLevel::Warm => 2,
        ActivityLevel::Active => 3,
    }
}

/// Role as text.
pub fn role_name(r: NodeRole) -> &'static str {
    match r {
        NodeRole::Independent => "independent",
        NodeRole::Master => "master",
        NodeRole::Backup => "backup",
    }
}
