//! The gateway's part in a fleet (`[fleet]`, see persist-fleet): a central
//! gateway's master publishes the shared record types; an edge gateway
//! consumes them (on both nodes of an edge pair: the backup's closed write
//! gate keeps its consumer idle, and a promoted backup goes on from the
//! fleet position its pair link carried over). NATS may be down when the
//! gateway starts or for days after: the gateway runs on what it has and
//! starting is retried with a backoff. `/fleet` shows the fleet (central:
//! every edge, its position, lag, last report and digest agreement; edge:
//! this edge), `/fleet.json` the same as JSON.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use persist::sync::redundancy::NodeRole;
use persist::Store;
use persist_fleet::{Edge, FleetConfig, FleetError, Publisher, StatusReader};

use crate::operator::esc;

enum Running {
    Publisher(Publisher),
    Edge(Edge),
}

#[derive(Default)]
struct FleetState {
    running: Option<Running>,
    /// Why it is not running (yet).
    error: Option<String>,
}

/// The fleet side of one gateway: started in the background, stopped with
/// the gateway.
pub(crate) struct FleetRunner {
    cfg: FleetConfig,
    role: NodeRole,
    /// The edges' status for `/fleet` on a central node, over one kept
    /// NATS connection (not one per page load).
    status: StatusReader,
    state: Arc<Mutex<FleetState>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What `/fleet.json` answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetView {
    /// `central`, `edge`, or `none` (a central backup: its master publishes).
    pub part: &'static str,
    /// The fleet (cluster) name.
    pub cluster: String,
    /// Why the publisher or edge is not running, or the fleet view failed.
    pub error: Option<String>,
    /// Central: the last position published.
    pub published: Option<u64>,
    /// The edges (central: every edge that reported; edge: this one).
    pub edges: Vec<EdgeRow>,
}

/// One edge in the fleet view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EdgeRow {
    /// Its name.
    pub edge: String,
    /// The fleet position it applied.
    pub position: u64,
    /// Messages in the stream after its last one.
    pub lag: u64,
    /// Milliseconds since it last reported (central view).
    pub last_seen_ms_ago: Option<u64>,
    /// Whether its digest is the central one at its position (`None`:
    /// unknown, the entry is no longer in the stream).
    pub digest_agrees: Option<bool>,
    /// Its digest (hex).
    pub digest: String,
    /// Snapshots it loaded.
    pub bootstraps: u64,
    /// Messages it refused (authentication or decoding).
    pub refused: u64,
    /// Its last error.
    pub last_error: Option<String>,
}

/// Checks, before the node starts, that every shared table is registered
/// by a module, and registers the edge's own fleet records.
pub(crate) fn prepare(cfg: &FleetConfig, store: &Store) -> Result<(), String> {
    if cfg.edge.is_some() {
        persist_fleet::records::register(store).map_err(|e| format!("[fleet] {e}"))?;
    }
    for t in &cfg.shared {
        if store.key_column_of(t).is_none() {
            return Err(format!(
                "[fleet] shared: table `{t}` is not registered by any module of this gateway"
            ));
        }
    }
    Ok(())
}

fn retryable(e: &FleetError) -> bool {
    matches!(e, FleetError::Nats { .. } | FleetError::Timeout { .. })
}

impl FleetRunner {
    /// Starts the publisher (central master) or the edge consumer in the
    /// background, retrying while NATS cannot be reached (1 s, doubling to
    /// 30 s); a central backup runs neither.
    pub(crate) fn start(cfg: FleetConfig, store: Store, role: NodeRole) -> FleetRunner {
        let state = Arc::new(Mutex::new(FleetState::default()));
        let central = cfg.edge.is_none();
        let (c, s) = (cfg.clone(), state.clone());
        let task = tokio::spawn(async move {
            if central && role != NodeRole::Master {
                return; // a central backup: its master publishes
            }
            let mut wait = Duration::from_secs(1);
            loop {
                let started = if central {
                    Publisher::start(store.clone(), c.clone())
                        .await
                        .map(Running::Publisher)
                } else {
                    Edge::start(store.clone(), c.clone())
                        .await
                        .map(Running::Edge)
                };
                match started {
                    Ok(r) => {
                        tracing::info!(cluster = %c.cluster, edge = ?c.edge, "fleet started");
                        let mut st = s.lock();
                        st.running = Some(r);
                        st.error = None;
                        return;
                    }
                    Err(e) => {
                        let first = s.lock().error.as_deref() != Some(&e.to_string());
                        if first {
                            tracing::warn!("fleet: {e}");
                        }
                        s.lock().error = Some(e.to_string());
                        if !retryable(&e) {
                            tracing::error!("fleet: {e}: not retried; fix the configuration");
                            return;
                        }
                    }
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
        FleetRunner {
            status: StatusReader::new(cfg.clone()),
            cfg,
            role,
            state,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops the publisher or consumer (and a start still being retried).
    pub(crate) async fn stop(&self) {
        let task = self.task.lock().take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        let running = self.state.lock().running.take();
        match running {
            Some(Running::Publisher(p)) => p.stop().await,
            Some(Running::Edge(e)) => e.stop().await,
            None => {}
        }
    }

    async fn view(&self) -> FleetView {
        let mut view = FleetView {
            part: match (&self.cfg.edge, self.role) {
                (Some(_), _) => "edge",
                (None, NodeRole::Master) => "central",
                (None, _) => "none",
            },
            cluster: self.cfg.cluster.clone(),
            error: self.state.lock().error.clone(),
            published: None,
            edges: Vec::new(),
        };
        let local = match &self.state.lock().running {
            Some(Running::Publisher(p)) => {
                let st = p.status();
                view.published = Some(st.position);
                view.error = view.error.or(st.last_error);
                None
            }
            Some(Running::Edge(e)) => Some(e.status()),
            None => None,
        };
        if let Some(st) = local {
            view.edges.push(EdgeRow {
                edge: st.edge,
                position: st.position,
                lag: st.lag,
                last_seen_ms_ago: None,
                digest_agrees: None,
                digest: st.digest,
                bootstraps: st.bootstraps,
                refused: st.refused,
                last_error: st.last_error,
            });
            return view;
        }
        if self.cfg.edge.is_none() {
            match self.status.read().await {
                Ok(edges) => {
                    view.edges = edges
                        .into_iter()
                        .map(|e| EdgeRow {
                            edge: e.status.edge,
                            position: e.status.position,
                            lag: e.status.lag,
                            last_seen_ms_ago: Some(e.age_ms),
                            digest_agrees: e.digest_agrees,
                            digest: e.status.digest,
                            bootstraps: e.status.bootstraps,
                            refused: e.status.refused,
                            last_error: e.status.last_error,
                        })
                        .collect()
                }
                Err(e) => view.error = Some(format!("reading the fleet's status: {e}")),
            }
        }
        view
    }
}

/// `/fleet` and `/fleet.json`.
pub(crate) fn router(runner: Arc<FleetRunner>) -> Router {
    Router::new()
        .route("/fleet", get(page))
        .route("/fleet.json", get(json))
        .with_state(runner)
}

async fn json(State(r): State<Arc<FleetRunner>>) -> Response {
    Json(r.view().await).into_response()
}

async fn page(State(r): State<Arc<FleetRunner>>) -> Html<String> {
    let v = r.view().await;
    let rows: String = v
        .edges
        .iter()
        .map(|e| {
            let agrees = match e.digest_agrees {
                Some(true) => "<td>agrees</td>".to_owned(),
                Some(false) => "<td class=\"err\">DIFFERS</td>".to_owned(),
                None => "<td>unknown</td>".to_owned(),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{agrees}<td>{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
                esc(&e.edge),
                e.position,
                e.lag,
                e.last_seen_ms_ago
                    .map_or("-".to_owned(), |ms| format!("{:.1} s ago", ms as f64 / 1000.0)),
                e.bootstraps,
                e.refused,
                esc(e.last_error.as_deref().unwrap_or("")),
            )
        })
        .collect();
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Fleet {cluster}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1a202c;background:#f7fafc}}\
table{{border-collapse:collapse;margin-top:1rem;background:#fff}} th,td{{text-align:left;padding:.4rem 1rem;border-bottom:1px solid #e2e8f0}}\
th{{color:#4a5568;font-weight:500}} .err{{color:#c53030}}</style></head><body>\
<h1>Fleet {cluster}</h1><p>This gateway: {part}{published}. <a href=\"/\">Node status</a></p>{error}\
<table><tr><th>edge</th><th>position</th><th>lag</th><th>last seen</th><th>digest</th><th>snapshots loaded</th><th>refused</th><th>last error</th></tr>{rows}</table>\
</body></html>",
        cluster = esc(&v.cluster),
        part = match v.part {
            "central" => "the central publisher",
            "edge" => "an edge",
            _ => "the central pair's backup (its master publishes)",
        },
        published = v
            .published
            .map(|p| format!(", published up to position {p}"))
            .unwrap_or_default(),
        error = v
            .error
            .as_deref()
            .map(|e| format!("<p class=\"err\">{}</p>", esc(e)))
            .unwrap_or_default(),
    ))
}
