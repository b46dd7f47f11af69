//! The REST API: every registered record type as JSON, from its derive
//! metadata, on the status listener next to the operator surface.
//!
//! ```text
//! GET    /api/v1/records                      the record types
//! GET    /api/v1/records/{type}               list: filters, order, paging in the query string
//! POST   /api/v1/records/{type}               create (201, Location, ETag)
//! GET    /api/v1/records/{type}/{key}         one record (ETag)
//! PUT    /api/v1/records/{type}/{key}         replace (If-Match required)
//! DELETE /api/v1/records/{type}/{key}         delete, cascading as declared (If-Match required)
//! GET    /api/v1/records/{type}/{key}/delete-preview   what a delete would cascade to or be refused by
//! GET    /api/v1/node                         this node: writable here, or where the master is
//! GET    /api/v1/events                       committed row changes, as server-sent events
//! GET    /openapi.json                        the OpenAPI 3 document of all of it
//! ```
//!
//! `{type}` is the record's table name. Every request carries an API token
//! (`Authorization: Bearer <token>`, `[[api.token]]` in the config; not the
//! operator token): a `read` token may `GET`, a `write` token may do
//! everything. Tokens are compared in constant time (their SHA-256 digests,
//! so not even the length leaks), every one of them on each request.
//!
//! Records are JSON objects by field name ([`json`] has the value forms);
//! `secret` fields are accepted on writes and never sent back (a `PUT`
//! without one keeps the stored value). Writes go through the store like a
//! module's own (validation, references, the log, replication, listeners)
//! and are recorded in the audit log with the token's name.
//!
//! # Row versions
//! The `ETag` of a record is its [`RowVersion`]: the hash of the stored row
//! image. `PUT` and `DELETE` need `If-Match` (the ETag last read, or `*` to
//! overwrite whatever is there); the version is checked inside the write
//! transaction, under the store's writer lock, so nothing can change the row
//! between the check and the write, and a stale version gets `412` with the
//! current one. Hashing the row instead of storing a version counter keeps
//! the schema as declared (no extra column, no fingerprint change), costs
//! nothing on writes that do not use it, and gives the same ETag on both
//! nodes, so a version read on the backup is good on the master, and stays
//! good across a failover.
//!
//! # Errors
//! Every error is `{"error": {"kind": ..., "message": ..., ...}}`, with the
//! typed error's fields: `unique_violation` (409, `column`, `field`),
//! `validation` (422, the validator's `message`), `missing_reference`
//! (422, `column`, `target`, `key`), `referenced` (409, `by_table`,
//! `by_column`), `not_master` (409, `master_url` when known, `active_node`),
//! `stale` (412, `current_version`), `precondition_required` (428),
//! `not_found` (404), `unknown_type` (404), `invalid_request` (400, with
//! `fields` naming each bad field), `unauthorized` (401), `forbidden` (403),
//! `busy` (503), `timeout` (504), `internal` (500).

mod json;
mod openapi;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use persist::sync::redundancy::NodeHandle;
use persist::{CompareOp, Error, KeyKind, RecordMeta, RowQuery, RowVersion, Stale, Store, Value};
use serde_json::{json, Map, Value as Json};
use sha2::{Digest, Sha256};

use crate::audit::AuditLog;
use crate::config::{ApiRole, ApiToken};

/// The most rows one list request returns.
pub const MAX_LIMIT: u64 = 1000;
/// Rows a list request returns without `limit`.
pub const DEFAULT_LIMIT: u64 = 100;
/// Store calls of the API running at once; more wait for [`QUEUE_WAIT`].
pub const CONCURRENT_CALLS: usize = 4;
/// How long a request waits for a store slot before `503 busy`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);
/// How long a request waits for the store before `504 timeout`.
pub const STORE_WAIT: Duration = Duration::from_secs(30);

/// What the API serves: a node and the tokens that may use it.
pub struct ApiSurface {
    /// The node's id.
    pub node_id: String,
    /// The node (its store, and its state for not-master answers).
    pub node: Arc<NodeHandle>,
    /// The API tokens (none: every request is refused).
    pub tokens: Vec<ApiToken>,
    /// Where writes are recorded.
    pub audit: Option<Arc<AuditLog>>,
    /// The other node's status URL, named when a write is refused here.
    pub peer_url: Option<String>,
}

struct Shared {
    events: tokio::sync::broadcast::Sender<Arc<str>>,
    feeding: Arc<AtomicBool>,
    streams: Arc<tokio::sync::Semaphore>,
    node_id: String,
    node: Arc<NodeHandle>,
    tokens: Vec<(ApiToken, [u8; 32])>,
    audit: Option<Arc<AuditLog>>,
    peer_url: Option<String>,
    permits: Arc<tokio::sync::Semaphore>,
}

/// Event streams open at once, at most (each holds a connection).
pub const MAX_STREAMS: usize = 32;
/// How long one event stream lasts; the client reconnects (the pages do),
/// which keeps every response within the listener's time bound.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(20);

/// Forwards the store's commits to the event streams, as one JSON line per
/// changed row (`{"table", "op", "key", "position"}`) or `{"reset": true}`
/// when changes were missed or the data replaced. Runs on its own thread
/// (the feed blocks) while any stream is open: with none, the store does
/// not capture rows for it. `feeding` says whether the thread runs; a
/// stream subscribes, then starts one if none does, and the thread, before
/// it stops, clears `feeding` and looks again, so a stream that opened
/// meanwhile is never left without one.
fn forward_commits(
    store: &Store,
    tx: &tokio::sync::broadcast::Sender<Arc<str>>,
    feeding: &Arc<AtomicBool>,
) {
    use persist::listen::{FeedItem, RecvError};
    if feeding.swap(true, Ordering::SeqCst) {
        return;
    }
    let feed = store.commit_feed(1024);
    // Key column of each table, by the metadata registered now.
    let keys: Vec<(&'static str, usize)> = store
        .record_types()
        .iter()
        .map(|m| (m.table, m.key))
        .collect();
    let (tx, running) = (tx.clone(), feeding.clone());
    let spawned = std::thread::Builder::new()
        .name("api-events".into())
        .spawn(move || loop {
            match feed.recv_timeout(Duration::from_secs(1)) {
                Ok(FeedItem::Commit(c)) => {
                    for ch in &c.changes {
                        let row = ch.new.as_ref().or(ch.old.as_ref());
                        let key = keys
                            .iter()
                            .find(|(t, _)| *t == ch.table)
                            .and_then(|(_, k)| row.and_then(|r| r.get(*k)))
                            .map_or(Json::Null, json::to_json);
                        let line = json!({
                            "table": ch.table,
                            "op": format!("{:?}", ch.op).to_lowercase(),
                            "key": key,
                            "position": c.position,
                        });
                        let _ = tx.send(Arc::from(line.to_string()));
                    }
                }
                Ok(FeedItem::Lagged(_) | FeedItem::Reset) => {
                    let _ = tx.send(Arc::from(r#"{"reset":true}"#));
                }
                Err(RecvError::Timeout) if tx.receiver_count() == 0 => {
                    running.store(false, Ordering::SeqCst);
                    if tx.receiver_count() == 0 || running.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
                Err(RecvError::Timeout) => {}
                Err(_) => {
                    running.store(false, Ordering::SeqCst);
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        feeding.store(false, Ordering::SeqCst);
        tracing::warn!("the API's event thread did not start ({e}): pages are not live");
    }
}

/// The API's routes, to merge into the status listener's router.
pub fn router(api: ApiSurface) -> Router {
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let shared = Arc::new(Shared {
        events,
        feeding: Arc::new(AtomicBool::new(false)),
        streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        tokens: api
            .tokens
            .into_iter()
            .map(|t| {
                let d = Sha256::digest(t.token.as_bytes()).into();
                (t, d)
            })
            .collect(),
        node_id: api.node_id,
        node: api.node,
        audit: api.audit,
        peer_url: api.peer_url,
        permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_CALLS)),
    });
    Router::new()
        .route("/openapi.json", get(openapi_document))
        .route("/api/v1/records", get(types))
        .route("/api/v1/node", get(node))
        .route("/api/v1/events", get(event_stream))
        .route(
            "/api/v1/records/{type}/{key}/delete-preview",
            get(delete_preview),
        )
        .route("/api/v1/records/{type}", get(list).post(create))
        .route(
            "/api/v1/records/{type}/{key}",
            get(read_one).put(replace).delete(remove),
        )
        .with_state(shared)
}

/// An error answer: a status and `{"error": {...}}`.
struct ApiError {
    status: StatusCode,
    body: Map<String, Json>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        let mut body = Map::new();
        body.insert("kind".into(), kind.into());
        body.insert("message".into(), Json::from(message.into()));
        ApiError { status, body }
    }

    fn with(mut self, key: &str, value: impl Into<Json>) -> ApiError {
        self.body.insert(key.into(), value.into());
        self
    }

    fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "error": Json::Object(self.body) })),
        )
            .into_response()
    }
}

type Answer = Result<Response, ApiError>;

/// Who holds the token, if it is one of the API's and allows `need`.
fn authorize(s: &Shared, headers: &HeaderMap, need: ApiRole) -> Result<String, ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API token is required (Authorization: Bearer <token>, [[api.token]] in the config)",
        ));
    };
    let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    // Every token is compared, in constant time, whichever matches.
    let mut found: Option<&ApiToken> = None;
    for (t, d) in &s.tokens {
        let diff = d.iter().zip(&digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            found = Some(t);
        }
    }
    match found {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if s.tokens.is_empty() {
                "this node has no API tokens configured ([[api.token]])"
            } else {
                "not an API token of this node"
            },
        )),
        Some(t) if need == ApiRole::Write && t.role == ApiRole::Read => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the API token `{}` may only read", t.name),
        )),
        Some(t) => Ok(format!("api:{}", t.name)),
    }
}

/// The record type served as `name`.
fn meta_of(store: &Store, name: &str) -> Result<&'static RecordMeta, ApiError> {
    let all = store.record_types();
    all.iter()
        .copied()
        .find(|m| m.table == name)
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|m| m.table).collect();
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_type",
                format!(
                    "no record type `{name}` on this node; there are: {}",
                    known.join(", ")
                ),
            )
        })
}

/// Runs a store call off the async threads, at most [`CONCURRENT_CALLS`]
/// at once, each wait bounded.
async fn blocking<T: Send + 'static>(
    s: &Shared,
    f: impl FnOnce(Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = tokio::time::timeout(QUEUE_WAIT, s.permits.clone().acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!(
                    "the store is busy: no slot within {} s, try again",
                    QUEUE_WAIT.as_secs()
                ),
            )
        })?;
    let store = s.node.store().clone();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        f(store)
    });
    match tokio::time::timeout(STORE_WAIT, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the store call failed: {e}"),
        )),
        Err(_) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the store did not answer within {} s; a write may still complete",
                STORE_WAIT.as_secs()
            ),
        )),
    }
}

/// A store error as the API answers it, fields named by the metadata.
fn store_error(s: &Shared, meta: &RecordMeta, e: Error) -> ApiError {
    let field_of = |table: &str, column: &str| -> Json {
        let m = if table == meta.table {
            Some(meta)
        } else {
            s.node
                .store()
                .record_types()
                .into_iter()
                .find(|m| m.table == table)
        };
        m.and_then(|m| m.column(column))
            .map_or(Json::Null, |(_, c)| Json::from(c.field))
    };
    match e {
        Error::NotFound { table, key } => {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{table}: no record with key {key}"))
                .with("table", table)
                .with("key", key)
        }
        Error::UniqueViolation {
            table,
            column,
            value,
        } => {
            let secret = meta
                .column(&column)
                .is_some_and(|(_, c)| c.ui.secret);
            let value = value.filter(|_| !secret);
            let mut err = ApiError::new(
                StatusCode::CONFLICT,
                "unique_violation",
                format!(
                    "{table}.{column}: unique constraint violated{}",
                    value.as_ref().map(|v| format!(" by {v}")).unwrap_or_default()
                ),
            )
            .with("field", field_of(&table, &column))
            .with("table", table)
            .with("column", column);
            if let Some(v) = value {
                err = err.with("value", v);
            }
            err
        }
        Error::Validation { table, message } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            message,
        )
        .with("table", table),
        Error::NotANumber { table, column } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            format!("{column}: NaN is not a number the store holds"),
        )
        .with("field", field_of(&table, &column))
        .with("table", table)
        .with("column", column),
        Error::MissingReference {
            table,
            column,
            target,
            key,
        } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_reference",
            format!("{table}.{column}: references {target} key {key}, which does not exist"),
        )
        .with("field", field_of(&table, &column))
        .with("table", table)
        .with("column", column)
        .with("target", target)
        .with("key", key),
        Error::Referenced {
            table,
            key,
            by_table,
            by_column,
        } => ApiError::new(
            StatusCode::CONFLICT,
            "referenced",
            format!(
                "{table} key {key} is still referenced by {by_table}.{by_column} (on_delete = restrict)"
            ),
        )
        .with("table", table)
        .with("key", key)
        .with("by_table", by_table)
        .with("by_column", by_column),
        Error::NotMaster { reason } => {
            let state = s.node.state();
            let elsewhere = state.active_node.as_deref() != Some(s.node_id.as_str());
            let master = s.peer_url.clone().filter(|_| elsewhere);
            let message = match &master {
                Some(url) => format!("not the master: writes are refused here ({reason}); write to {url}"),
                None => format!("not the master: writes are refused here ({reason})"),
            };
            ApiError::new(StatusCode::CONFLICT, "not_master", message)
                .with("reason", reason)
                .with("master_url", master.map_or(Json::Null, Json::from))
                .with(
                    "active_node",
                    state.active_node.map_or(Json::Null, Json::from),
                )
        }
        Error::Unavailable(why) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the database is unavailable: {why}"),
        ),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            other.to_string(),
        ),
    }
}

fn stale(st: Stale) -> ApiError {
    match st.current {
        Some(v) => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "stale",
            "the record was changed since it was read: read it again and reapply the change",
        )
        .with("current_version", v.to_string()),
        None => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "stale",
            "the record was deleted since it was read",
        )
        .with("current_version", Json::Null),
    }
}

fn etag(v: RowVersion) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{v}\"")).expect("hex digits are a valid header value")
}

/// `If-Match`: a version, `*` (None: any), or why the request is refused.
fn if_match(headers: &HeaderMap) -> Result<Option<RowVersion>, ApiError> {
    let Some(h) = headers.get(header::IF_MATCH) else {
        return Err(ApiError::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "If-Match is required: send the ETag of the record as read (or `*` to overwrite \
             whatever is stored)",
        ));
    };
    let text = h.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(None);
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(RowVersion::parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad(format!(
                "If-Match `{text}` is not an ETag of this API (one quoted version, or `*`)"
            ))
        })
}

fn path_key(meta: &RecordMeta, key: &str) -> Result<Value, ApiError> {
    json::from_text(meta.key_column(), key).map_err(|m| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{}: {m}", meta.table),
        )
    })
}

fn audit(s: &Shared, who: &str, what: &str, r: &Answer) {
    if let Some(a) = &s.audit {
        match r {
            Ok(resp) => a.record(who, what, true, &format!("{}", resp.status())),
            Err(e) => a.record(who, what, false, &e.message()),
        }
    }
}

fn record_response(status: StatusCode, meta: &RecordMeta, row: &[Value]) -> Response {
    let version = RowVersion::of(meta.table, row);
    let mut resp = (status, axum::Json(Json::Object(json::record(meta, row)))).into_response();
    resp.headers_mut().insert(header::ETAG, etag(version));
    resp
}

async fn openapi_document(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let doc = openapi::document(&s.node_id, &s.node.store().record_types());
    Ok(axum::Json(doc).into_response())
}

async fn types(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let all: Vec<Json> = s
        .node
        .store()
        .record_types()
        .iter()
        .map(|m| {
            json!({
                "type": m.table,
                "title": m.title,
                "key": m.key_column().field,
                "path": format!("/api/v1/records/{}", m.table),
            })
        })
        .collect();
    Ok(axum::Json(json!({ "types": all })).into_response())
}

/// The query string of a list: filters, `order`, `limit`, `offset`.
fn list_query(meta: &RecordMeta, raw: Option<&str>) -> Result<(RowQuery, u64, u64), ApiError> {
    let mut q = RowQuery::default();
    let (mut limit, mut offset) = (DEFAULT_LIMIT, 0u64);
    let column = |field: &str| -> Result<usize, ApiError> {
        match meta.columns.iter().position(|c| c.field == field) {
            Some(i) if meta.columns[i].ui.secret => Err(ApiError::bad(format!(
                "`{field}` is secret: it cannot be filtered or ordered by"
            ))),
            Some(i) => Ok(i),
            None => Err(ApiError::bad(format!(
                "no field `{field}`; the fields are: {}",
                meta.columns
                    .iter()
                    .map(|c| c.field)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::bad(format!("limit `{v}`: give 1 to {MAX_LIMIT}")))?;
            }
            "offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::bad(format!("offset `{v}`: give a row count")))?;
            }
            "order" => {
                for part in v.split(',').filter(|p| !p.is_empty()) {
                    let (desc, field) = match part.strip_prefix('-') {
                        Some(f) => (true, f),
                        None => (false, part),
                    };
                    q.order.push((column(field)?, desc));
                }
            }
            key => {
                let (field, op) = key.rsplit_once('.').unwrap_or((key, "eq"));
                let i = column(field)?;
                let c = &meta.columns[i];
                let (op, value) = match op {
                    "null" => match v.as_ref() {
                        "true" => (CompareOp::Eq, Value::Null),
                        "false" => (CompareOp::Ne, Value::Null),
                        _ => return Err(ApiError::bad(format!("{key}: give true or false"))),
                    },
                    op => {
                        let op = match op {
                            "eq" => CompareOp::Eq,
                            "ne" => CompareOp::Ne,
                            "lt" => CompareOp::Lt,
                            "le" => CompareOp::Le,
                            "gt" => CompareOp::Gt,
                            "ge" => CompareOp::Ge,
                            other => {
                                return Err(ApiError::bad(format!(
                                    "`{other}` in `{key}` is not an operator: eq, ne, lt, le, \
                                     gt, ge, null"
                                )))
                            }
                        };
                        (op, json::from_text(c, &v).map_err(ApiError::bad)?)
                    }
                };
                q.filters.push((i, op, value));
            }
        }
    }
    q.limit = Some(limit);
    q.offset = Some(offset);
    Ok((q, limit, offset))
}

async fn list(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let meta = meta_of(s.node.store(), &name)?;
    let (q, limit, offset) = list_query(meta, raw.as_deref())?;
    let s2 = s.clone();
    let (rows, total) = blocking(&s, move |store| {
        let rows = store
            .query_rows(meta.table, &q)
            .map_err(|e| store_error(&s2, meta, e))?;
        let total = store
            .count_rows(meta.table, &q)
            .map_err(|e| store_error(&s2, meta, e))?;
        Ok((rows, total))
    })
    .await?;
    let versions: Vec<String> = rows
        .iter()
        .map(|r| RowVersion::of(meta.table, r).to_string())
        .collect();
    let items: Vec<Json> = rows
        .iter()
        .map(|r| Json::Object(json::record(meta, r)))
        .collect();
    Ok(axum::Json(json!({
        "type": meta.table,
        "items": items,
        "versions": versions,
        "total": total,
        "offset": offset,
        "limit": limit,
    }))
    .into_response())
}

async fn read_one(
    State(s): State<Arc<Shared>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let meta = meta_of(s.node.store(), &name)?;
    let key = path_key(meta, &key)?;
    let s2 = s.clone();
    let k = key.clone();
    let row = blocking(&s, move |store| {
        store
            .get_row(meta.table, &k)
            .map_err(|e| store_error(&s2, meta, e))
    })
    .await?;
    match row {
        Some(row) => Ok(record_response(StatusCode::OK, meta, &row)),
        None => Err(store_error(
            &s,
            meta,
            Error::NotFound {
                table: meta.table.to_owned(),
                key: json::to_json(&key).to_string(),
            },
        )),
    }
}

/// What a body gives for each column: a value, or nothing (keep the stored
/// secret on a replace).
fn body_row(
    meta: &RecordMeta,
    body: &[u8],
    key: Option<&Value>,
) -> Result<Vec<Option<Value>>, ApiError> {
    let obj: Map<String, Json> = match serde_json::from_slice(body) {
        Ok(Json::Object(o)) => o,
        Ok(_) => {
            return Err(ApiError::bad(
                "the body must be a JSON object of the record's fields",
            ))
        }
        Err(e) => return Err(ApiError::bad(format!("the body is not JSON: {e}"))),
    };
    let mut fields = Map::new();
    for k in obj.keys() {
        if !meta.columns.iter().any(|c| c.field == k) {
            fields.insert(
                k.clone(),
                Json::from(format!(
                    "no field `{k}`; the fields are: {}",
                    meta.columns
                        .iter()
                        .map(|c| c.field)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
        }
    }
    let mut row = Vec::with_capacity(meta.columns.len());
    for (i, c) in meta.columns.iter().enumerate() {
        let given = obj.get(c.field);
        let value = if i == meta.key {
            match (key, given) {
                // Replace: the key is the path's; the body may repeat it.
                (Some(k), None) => Some(k.clone()),
                (Some(k), Some(j)) => match json::from_json(c, j) {
                    Ok(v) if v == *k => Some(v),
                    Ok(_) => {
                        fields.insert(
                            c.field.into(),
                            Json::from(format!("{} must be the key in the path", c.field)),
                        );
                        None
                    }
                    Err(m) => {
                        fields.insert(c.field.into(), Json::from(m));
                        None
                    }
                },
                (None, Some(_)) if meta.key_kind == KeyKind::Identity => {
                    fields.insert(
                        c.field.into(),
                        Json::from(format!(
                            "{} is assigned by the store: leave it out",
                            c.field
                        )),
                    );
                    None
                }
                (None, None) if meta.key_kind == KeyKind::Identity => Some(Value::I64(0)),
                (None, Some(j)) => match json::from_json(c, j) {
                    Ok(v) => Some(v),
                    Err(m) => {
                        fields.insert(c.field.into(), Json::from(m));
                        None
                    }
                },
                (None, None) => {
                    fields.insert(
                        c.field.into(),
                        Json::from(format!("{} is required", c.field)),
                    );
                    None
                }
            }
        } else {
            match given {
                Some(j) => match json::from_json(c, j) {
                    Ok(v) => Some(v),
                    Err(m) => {
                        fields.insert(c.field.into(), Json::from(m));
                        None
                    }
                },
                // A replace keeps a secret it was not given.
                None if key.is_some() && c.ui.secret => None,
                None if key.is_none() && c.default.is_some() => c.default.clone(),
                None if c.nullable => Some(Value::Null),
                None => {
                    fields.insert(
                        c.field.into(),
                        Json::from(format!("{} is required", c.field)),
                    );
                    None
                }
            }
        };
        row.push(value);
    }
    if !fields.is_empty() {
        let n = fields.len();
        return Err(ApiError::bad(format!(
            "{n} field{} of the body {} wrong",
            if n == 1 { "" } else { "s" },
            if n == 1 { "is" } else { "are" }
        ))
        .with("fields", Json::Object(fields)));
    }
    Ok(row)
}

async fn create(
    State(s): State<Arc<Shared>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let what = format!("POST /api/v1/records/{name}");
    let who = match authorize(&s, &headers, ApiRole::Write) {
        Ok(w) => w,
        Err(e) => return refused(&s, &headers, &what, e),
    };
    let r = async {
        let meta = meta_of(s.node.store(), &name)?;
        let row: Vec<Value> = body_row(meta, &body, None)?
            .into_iter()
            .map(|v| v.unwrap_or(Value::Null))
            .collect();
        let s2 = s.clone();
        let row = blocking(&s, move |store| {
            store
                .write(|tx| {
                    let key = tx.insert_values(meta.table, row)?;
                    tx.get_row(meta.table, &key)
                })
                .map_err(|e| store_error(&s2, meta, e))
        })
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the new row is gone",
            )
        })?;
        let mut resp = record_response(StatusCode::CREATED, meta, &row);
        let key = json::to_json(&row[meta.key]);
        let key = key.as_str().map_or_else(|| key.to_string(), str::to_owned);
        // A path segment: `+` is a plus there, so not the form encoding.
        let location =
            percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
        if let Ok(v) = HeaderValue::from_str(&format!("/api/v1/records/{}/{location}", meta.table))
        {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        Ok(resp)
    }
    .await;
    audit(&s, &who, &what, &r);
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn replace(
    State(s): State<Arc<Shared>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let what = format!("PUT /api/v1/records/{name}/{key}");
    let who = match authorize(&s, &headers, ApiRole::Write) {
        Ok(w) => w,
        Err(e) => return refused(&s, &headers, &what, e),
    };
    let r = async {
        let meta = meta_of(s.node.store(), &name)?;
        let key = path_key(meta, &key)?;
        let expected = if_match(&headers)?;
        let given = body_row(meta, &body, Some(&key))?;
        let s2 = s.clone();
        let row = blocking(&s, move |store| {
            store
                .write(|tx| {
                    let Some(current) = tx.get_row(meta.table, &key)? else {
                        return Err(Error::NotFound {
                            table: meta.table.to_owned(),
                            key: json::to_json(&key).to_string(),
                        });
                    };
                    let row: Vec<Value> = given
                        .into_iter()
                        .zip(current)
                        .map(|(g, c)| g.unwrap_or(c))
                        .collect();
                    Ok(match tx.update_values(meta.table, row.clone(), expected)? {
                        Ok(_) => Ok(row),
                        Err(st) => Err(st),
                    })
                })
                .map_err(|e| store_error(&s2, meta, e))?
                .map_err(stale)
        })
        .await?;
        Ok(record_response(StatusCode::OK, meta, &row))
    }
    .await;
    audit(&s, &who, &what, &r);
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn remove(
    State(s): State<Arc<Shared>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let what = format!("DELETE /api/v1/records/{name}/{key}");
    let who = match authorize(&s, &headers, ApiRole::Write) {
        Ok(w) => w,
        Err(e) => return refused(&s, &headers, &what, e),
    };
    let r = async {
        let meta = meta_of(s.node.store(), &name)?;
        let key = path_key(meta, &key)?;
        let expected = if_match(&headers)?;
        let s2 = s.clone();
        blocking(&s, move |store| {
            store
                .write(|tx| tx.delete_values(meta.table, &key, expected))
                .map_err(|e| store_error(&s2, meta, e))?
                .map_err(stale)
        })
        .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    audit(&s, &who, &what, &r);
    r.unwrap_or_else(IntoResponse::into_response)
}

/// A write refused for its token: audited as who it was not.
fn refused(s: &Shared, headers: &HeaderMap, what: &str, e: ApiError) -> Response {
    if let Some(a) = &s.audit {
        let who = if headers.contains_key(header::AUTHORIZATION) {
            if e.status == StatusCode::FORBIDDEN {
                "a read-only API token"
            } else {
                "a wrong API token"
            }
        } else {
            "no token"
        };
        a.record(who, what, false, &e.message());
    }
    e.into_response()
}

async fn node(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let state = s.node.state();
    let gate = s.node.store().write_gate();
    let elsewhere = state.active_node.as_deref() != Some(s.node_id.as_str());
    Ok(axum::Json(json!({
        "node_id": s.node_id,
        "role": format!("{:?}", state.role),
        "writable": gate.is_none(),
        "reason": gate,
        "master_url": s.peer_url.clone().filter(|_| elsewhere || gate.is_some()),
        "active_node": state.active_node,
    }))
    .into_response())
}

async fn delete_preview(
    State(s): State<Arc<Shared>>,
    Path((name, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let meta = meta_of(s.node.store(), &name)?;
    let key = path_key(meta, &key)?;
    let s2 = s.clone();
    let p = blocking(&s, move |store| {
        store
            .delete_preview(meta.table, &key)
            .map_err(|e| store_error(&s2, meta, e))
    })
    .await?;
    let list = |v: &[(&str, u64)]| -> Json {
        v.iter()
            .map(|(t, n)| json!({"type": t, "count": n}))
            .collect::<Vec<_>>()
            .into()
    };
    Ok(axum::Json(json!({
        "cascade": list(&p.cascade),
        "restrict": list(&p.restrict),
    }))
    .into_response())
}

/// `text/event-stream` of committed row changes (`data: {"table", "op",
/// "key", "position"}`), for [`STREAM_LIFETIME`], then the stream ends and
/// the client reconnects. `?type=t` keeps one record type.
async fn event_stream(
    State(s): State<Arc<Shared>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Answer {
    authorize(&s, &headers, ApiRole::Read)?;
    let only: Option<String> = form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "type")
        .map(|(_, v)| v.into_owned());
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{MAX_STREAMS} event streams are open already"),
        )
    })?;
    let rx = s.events.subscribe();
    forward_commits(s.node.store(), &s.events, &s.feeding);
    let end = tokio::time::Instant::now() + STREAM_LIFETIME;
    // The first frame tells the client the stream is live.
    let state = (rx, only, permit, false);
    let stream =
        futures_util::stream::unfold(state, move |(mut rx, only, permit, started)| async move {
            if !started {
                let hello = Bytes::from_static(b": live\n\n");
                return Some((
                    Ok::<_, std::convert::Infallible>(hello),
                    (rx, only, permit, true),
                ));
            }
            loop {
                let item = tokio::time::timeout_at(end, rx.recv()).await.ok()?;
                let line = match item {
                    Ok(line) => line,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        Arc::from(r#"{"reset":true}"#)
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                let wanted = only.as_deref().is_none_or(|t| {
                    line.contains(&format!("\"table\":\"{t}\"")) || line.contains("\"reset\"")
                });
                if wanted {
                    let frame = Bytes::from(format!("data: {line}\n\n"));
                    return Some((Ok(frame), (rx, only, permit, true)));
                }
            }
        });
    let mut resp = axum::body::Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}
