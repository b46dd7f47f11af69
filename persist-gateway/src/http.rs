//! Serving an axum [`Router`] with bounds that hostile or broken clients
//! cannot get around: [`serve_bounded`] and its [`HttpLimits`].
//!
//! `axum::serve` keeps every connection for as long as the client likes: a
//! connection that never sends a request, an idle keep-alive connection, a
//! request head trickled a byte at a time (slowloris) or a body never
//! finished each hold a descriptor forever, and enough of them (1,100 under
//! `ulimit -n 1024`) leave the process without descriptors: `/state` stops
//! answering. Here every connection is bounded in time and their number is
//! capped:
//!
//! - **idle**: no request in progress and nothing read or written for
//!   [`HttpLimits::idle_timeout`]: closed (a fresh connection that says
//!   nothing, a keep-alive connection between requests, a client that
//!   stopped reading);
//! - **request head**: from its first byte, complete within
//!   [`HttpLimits::header_timeout`], however the bytes trickle in;
//! - **request**: from a complete head to the response (the handler and any
//!   body it reads) within [`HttpLimits::request_timeout`], else
//!   `408 Request Timeout` and the connection closes;
//! - **connections**: at most [`HttpLimits::max_connections`]. When one more
//!   connects, the oldest connection with no request in progress is closed
//!   to make room, so a flood of idle connections cannot keep an operator's
//!   `/state` out; only when every connection is in the middle of a request
//!   is the new one closed at once.
//!
//! The accept loop pauses when `accept()` fails for want of descriptors or
//! memory (`EMFILE`, `ENFILE`, ...) instead of retrying at once, and logs the
//! episode once ([`AcceptBackoff`]). HTTP/1.1 only (what axum is built with
//! here).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use persist::sync::transport::accept::AcceptBackoff;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tower_service::Service;

/// Largest request head (and read buffer) per connection: far above what an
/// operator's browser or a Prometheus scraper sends, and it bounds memory to
/// `max_connections` times this.
const MAX_BUF: usize = 64 * 1024;

/// Refused connections are logged at most once per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds of [`serve_bounded`]. The defaults suit an operator surface on
/// a gateway: a few browsers and a metrics scraper, under a process
/// descriptor limit as low as 1,024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once, at most (default 128: far more than the
    /// operators and scrapers of one gateway, and a small share of a 1,024
    /// descriptor limit, so the node's own links and files are never short).
    pub max_connections: usize,
    /// Time from a request's first byte to its complete head (request line
    /// and headers), default 10 s: a slowloris client is closed then,
    /// however slowly it keeps sending.
    pub header_timeout: Duration,
    /// Time a connection with no request in progress may stay silent (nothing
    /// read, nothing written), default 10 s: longer than the status page's
    /// 2 s refresh, so a browser keeps its connection; a scraper polling
    /// less often than this simply reconnects.
    pub idle_timeout: Duration,
    /// Time from a complete request head to the response, body included,
    /// default 30 s: a body never finished ends in `408 Request Timeout`.
    /// The handlers answer in milliseconds.
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            max_connections: 128,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl HttpLimits {
    /// Checks that every bound can work: at least one connection, and
    /// timeouts of at least 1 ms.
    pub fn validate(&self) -> io::Result<()> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if self.max_connections == 0 {
            return invalid("HTTP limits: max_connections must be at least 1".into());
        }
        for (name, d) in [
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d < Duration::from_millis(1) {
                return invalid(format!(
                    "HTTP limits: {name} must be at least 1 ms (it is {d:?})"
                ));
            }
        }
        Ok(())
    }
}

/// Serves `app` on `listener` within `limits` (see the module docs) until
/// the task is dropped. Returns an error only for limits that cannot work
/// or a listener without an address; accept failures are waited out.
pub async fn serve_bounded(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
) -> io::Result<()> {
    limits.validate()?;
    let addr = listener.local_addr()?;
    let mut backoff = AcceptBackoff::new(format!("operator surface {addr}"));
    let mut connections = Connections::new(limits.max_connections);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded();
                // Connections closed to make room leave when their tasks
                // next run; under a flood on a busy machine the table can
                // fill with them faster. Let them run (up to ~50 ms) before
                // refusing for crowding: refusing then turned the operator
                // away under 1,100 idle connections on a loaded 2-core CI.
                let (mut stream, mut waits) = (stream, 0);
                while let Some(back) =
                    connections.admit(stream, peer, &app, limits, waits < CROWDED_WAITS)
                {
                    stream = back;
                    waits += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Err(e) => {
                let pause = backoff.failed(&e);
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data are plain counters and times: usable after a panic elsewhere.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connections being served, by number: the oldest first.
struct Connections {
    max: usize,
    live: Arc<Mutex<BTreeMap<u64, Slot>>>,
    next: u64,
    refused: Throttle,
}

struct Slot {
    activity: Arc<Activity>,
    task: AbortHandle,
    /// Closed to make room; its task is ending.
    closing: bool,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max,
            live: Arc::default(),
            next: 0,
            refused: Throttle::default(),
        }
    }

    /// Serves `stream` in a task of its own if there is room (making room
    /// by closing the oldest idle connection), else closes it; while the
    /// table is crowded with connections still leaving, hands `stream` back
    /// if `may_wait`.
    fn admit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        app: &Router,
        limits: HttpLimits,
        may_wait: bool,
    ) -> Option<TcpStream> {
        let mut live = lock(&self.live);
        let open = live.values().filter(|s| !s.closing).count();
        // Closed connections leave within a scheduling round; this bound
        // keeps descriptors bounded even if they have not left yet.
        let crowded = live.len() >= 2 * self.max;
        if crowded && may_wait {
            return Some(stream);
        }
        let closed = if !crowded && open >= self.max {
            close_oldest_idle(&mut live)
        } else {
            None
        };
        if crowded || (open >= self.max && closed.is_none()) {
            drop(live);
            if let Some(unlogged) = self.refused.note() {
                tracing::warn!(
                    %peer,
                    "operator surface: {} connections and none idle: connection refused \
                     ({unlogged} more refused since the last such line)",
                    self.max
                );
            }
            return None;
        }
        let id = self.next;
        self.next += 1;
        let activity = Arc::new(Activity::new());
        let leave = Leave {
            live: self.live.clone(),
            id,
        };
        // Spawned under the lock: the task removes its slot when it ends,
        // which it cannot do before the slot is in.
        let task = tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits,
            activity.clone(),
            leave,
        ));
        live.insert(
            id,
            Slot {
                activity,
                task: task.abort_handle(),
                closing: false,
            },
        );
        drop(live);
        // Outside the lock: the aborted task takes it to leave.
        if let Some(task) = closed {
            task.abort();
        }
        None
    }
}

/// How many 1 ms waits a new connection gets while the table is crowded
/// with connections still leaving.
const CROWDED_WAITS: usize = 50;

/// Marks the oldest connection that has no request in progress as closing
/// and returns its task, to abort; `None` if there is none.
fn close_oldest_idle(live: &mut BTreeMap<u64, Slot>) -> Option<AbortHandle> {
    let slot = live
        .values_mut()
        .find(|s| !s.closing && !s.activity.in_request())?;
    tracing::debug!("operator surface: closing the oldest idle connection to make room");
    slot.closing = true;
    Some(slot.task.clone())
}

/// Removes a connection's slot when its task ends (or is aborted).
struct Leave {
    live: Arc<Mutex<BTreeMap<u64, Slot>>>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.live).remove(&self.id);
    }
}

/// Serves one connection until it ends, a bound closes it, or its task is
/// aborted to make room.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    activity: Arc<Activity>,
    _leave: Leave,
) {
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |req| {
            respond(app.clone(), req, activity.clone(), limits.request_timeout)
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(MAX_BUF)
        // A backstop: hyper's own timer runs from when the connection starts
        // waiting for a head; the watchdog below closes it sooner.
        .header_read_timeout(limits.idle_timeout + limits.header_timeout);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        let deadline = activity.deadline(&limits);
        let wake = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now));
        tokio::select! {
            ended = conn.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(%peer, "operator surface connection: {e}");
                }
                return;
            }
            // A request ended: the connection's deadline changed.
            _ = activity.request_ended.notified() => {}
            _ = wake, if deadline.is_some() => {
                if let Some(why) = activity.expired(&limits, Instant::now()) {
                    tracing::debug!(%peer, "operator surface connection closed: {why}");
                    return;
                }
            }
        }
    }
}

/// Runs one request through `app` within `timeout`.
async fn respond(
    mut app: Router,
    req: Request<Incoming>,
    activity: Arc<Activity>,
    timeout: Duration,
) -> Result<Response<Body>, Infallible> {
    let _request = InRequest::start(activity);
    let run = async {
        std::future::poll_fn(|cx| Service::<Request<Incoming>>::poll_ready(&mut app, cx)).await?;
        app.call(req).await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(response) => response,
        Err(_) => Ok(timed_out(timeout)),
    }
}

fn timed_out(timeout: Duration) -> Response<Body> {
    let mut r = Response::new(Body::from(format!(
        "request not completed within {timeout:?}\n"
    )));
    *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
    r.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    r
}

/// What a connection did last, for its bounds.
struct Activity {
    state: Mutex<ActivityState>,
    /// Signalled when a request ends (the deadline moves).
    request_ended: Notify,
}

struct ActivityState {
    /// When a byte was last read or written, or a request ended.
    last_io: Instant,
    /// When the first byte of a request head still incomplete arrived.
    head_since: Option<Instant>,
    /// Requests in the service (0 or 1 over HTTP/1.1).
    in_request: usize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            state: Mutex::new(ActivityState {
                last_io: Instant::now(),
                head_since: None,
                in_request: 0,
            }),
            request_ended: Notify::new(),
        }
    }

    fn read(&self) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.last_io = now;
        if s.in_request == 0 && s.head_since.is_none() {
            s.head_since = Some(now);
        }
    }

    fn wrote(&self) {
        lock(&self.state).last_io = Instant::now();
    }

    fn in_request(&self) -> bool {
        lock(&self.state).in_request > 0
    }

    /// When the connection is due to be closed, if nothing happens before
    /// (`None`: a request is in the service, which bounds itself).
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        let s = lock(&self.state);
        if s.in_request > 0 {
            return None;
        }
        let idle = s.last_io + limits.idle_timeout;
        Some(match s.head_since {
            Some(t) => idle.min(t + limits.header_timeout),
            None => idle,
        })
    }

    /// Why the connection must be closed at `now`, if it must.
    fn expired(&self, limits: &HttpLimits, now: Instant) -> Option<String> {
        let s = lock(&self.state);
        if s.in_request > 0 {
            return None;
        }
        if s.head_since
            .is_some_and(|t| now >= t + limits.header_timeout)
        {
            return Some(format!(
                "request head not complete within {:?}",
                limits.header_timeout
            ));
        }
        (now >= s.last_io + limits.idle_timeout)
            .then(|| format!("idle for {:?}", limits.idle_timeout))
    }
}

/// A request in the service: counted while it runs, however it ends.
struct InRequest(Arc<Activity>);

impl InRequest {
    fn start(activity: Arc<Activity>) -> InRequest {
        {
            let mut s = lock(&activity.state);
            s.in_request += 1;
            s.head_since = None;
        }
        InRequest(activity)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.0.state);
            s.in_request = s.in_request.saturating_sub(1);
            s.last_io = Instant::now();
        }
        self.0.request_ended.notify_one();
    }
}

/// A TCP stream that records its progress in an [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_written(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_written(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Tracked {
    fn note_written(&self, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.activity.wrote();
        }
    }
}

/// At most one log line per [`LOG_EVERY`], counting those left out.
#[derive(Default)]
struct Throttle {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// `Some(left out since the last line)` if this one is to be logged.
    fn note(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.logged_at.is_some_and(|t| now < t + LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_zero_is_refused() {
        assert!(HttpLimits::default().validate().is_ok());
        let zero = HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        };
        assert!(zero.validate().is_err());
        let instant = HttpLimits {
            header_timeout: Duration::ZERO,
            ..HttpLimits::default()
        };
        assert!(instant.validate().is_err());
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    /// Whether the server closes `s` within 5 s (reading what it sends).
    async fn closed_soon(s: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 1024];
        let read = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .is_ok()
    }

    async fn get(s: &mut TcpStream, path: &str) {
        use tokio::io::AsyncWriteExt;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
    }

    /// Over the cap the oldest idle connection is closed for the new one;
    /// with every connection in a request, the new one is closed at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_the_cap_the_oldest_idle_goes_and_with_none_idle_the_new_one_is_refused() {
        use axum::routing::get as route;
        use tokio::io::AsyncReadExt;
        let (entered, mut inside) = tokio::sync::mpsc::unbounded_channel::<()>();
        let app = Router::new().route("/", route(|| async { "ok" })).route(
            "/slow",
            route(move || {
                let entered = entered.clone();
                async move {
                    let _ = entered.send(());
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    "late"
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        };
        let server = tokio::spawn(serve_bounded(listener, app, limits));
        let mut first = connect(addr).await;
        let mut second = connect(addr).await;
        get(&mut second, "/").await;
        let mut answer = [0u8; 512];
        let n = second.read(&mut answer).await.unwrap();
        assert!(String::from_utf8_lossy(&answer[..n]).ends_with("ok"));
        let mut third = connect(addr).await;
        assert!(
            closed_soon(&mut first).await,
            "the oldest idle connection was not closed for a new one"
        );
        get(&mut second, "/slow").await;
        get(&mut third, "/slow").await;
        for _ in 0..2 {
            inside.recv().await.unwrap();
        }
        let mut fourth = connect(addr).await;
        assert!(
            closed_soon(&mut fourth).await,
            "a connection over the cap was served while every one was in a request"
        );
        server.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_expires_at_the_header_timeout_an_idle_one_at_the_idle_timeout() {
        let limits = HttpLimits {
            header_timeout: Duration::from_secs(4),
            idle_timeout: Duration::from_secs(3),
            ..HttpLimits::default()
        };
        let a = Activity::new();
        let start = Instant::now();
        assert_eq!(a.deadline(&limits), Some(start + limits.idle_timeout));
        // A byte every second: never idle, but the head is due 4 s after its first byte.
        for _ in 0..4 {
            a.read();
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let why = a.expired(&limits, Instant::now()).expect("expired");
        assert!(why.contains("head"), "{why}");
        // A request in the service is not closed, whatever the time.
        let r = InRequest::start(Arc::new(Activity::new()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(r.0.expired(&limits, Instant::now()).is_none());
        assert!(r.0.deadline(&limits).is_none());
        let activity = r.0.clone();
        drop(r);
        // It is idle from the end of the request on.
        assert_eq!(
            activity.deadline(&limits),
            Some(Instant::now() + limits.idle_timeout)
        );
    }
}
