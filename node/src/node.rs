//! An in-process analysis node for tests and the CLI.
//!
//! [`Node`] is an HTTP server (HTTP/1.1 and HTTP/2 with prior knowledge,
//! "h2c", detected per connection; over TLS only when given a [`TlsConfig`],
//! with h2 and http/1.1 by ALPN) that takes `POST` batches on any path,
//! decodes them and keeps what it saw. It runs its own tokio runtime on a
//! background thread so plain synchronous `#[test]` functions can use it;
//! every method is synchronous and quick, except the `wait_*` ones, which
//! block (use the `*_async` variants from async code).
//!
//! How it answers is set at run time with [`Node::set_behavior`], to play a
//! healthy, failing, slow or dead node. [`Node::stop`] kills it (open
//! connections are dropped, the port is freed) and [`Node::restart`] brings
//! it back on the same address, for node-down tests.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify};

use crate::intake::extproc::{ExtProcStream, PROCESS_PATH};
use crate::intake::record::Record;
use crate::intake::security::{RequiredHeaders, TlsConfig};
use crate::intake::wire::{decode_batch, DecodeError};
use crate::pairing::Exchange;

/// Largest batch body accepted; far above the filter's `batch.max_bytes`
/// default (1 MiB), it only guards the test process against runaway input.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How the node answers a well-formed batch. A batch that does not decode is
/// always answered `400`, as a real node would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Behavior {
    /// Acknowledge at once with `204 No Content`.
    #[default]
    Ok,
    /// Answer at once with this status (e.g. `500`; a `2xx` acknowledges).
    /// A number that is no valid status is answered `500`.
    Status(u16),
    /// Acknowledge with `200 OK` after this delay.
    Delay(Duration),
    /// Never answer; the request stays open until the client gives up or the
    /// node stops.
    Hang,
}

/// One batch as received. Recorded when it arrives, before it is answered,
/// so a batch held by [`Behavior::Hang`] or [`Behavior::Delay`] is visible.
#[derive(Debug, Clone)]
pub struct BatchInfo {
    /// Request path, with the query string if any.
    pub path: String,
    /// `"HTTP/1.1"` or `"HTTP/2.0"`.
    pub http_version: String,
    /// `:authority` for HTTP/2, the `Host` header for HTTP/1.1.
    pub authority: Option<String>,
    pub headers: HeaderMap,
    /// Size of the body in bytes.
    pub body_len: usize,
    /// The decoded records; empty when `error` is set.
    pub records: Vec<Record>,
    pub error: Option<DecodeError>,
    /// The behaviour in force when the batch arrived, i.e. how it was (or
    /// will be) answered if it decoded.
    pub behavior: Behavior,
    pub received_at: Instant,
}

impl BatchInfo {
    /// A request header as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The count announced in `x-oob-mirror-records`.
    pub fn declared_records(&self) -> Option<usize> {
        self.header("x-oob-mirror-records")?.trim().parse().ok()
    }
}

/// Called for every batch, on the node's thread, before the batch is stored.
pub type BatchHook = Arc<dyn Fn(&BatchInfo) + Send + Sync>;

/// Asked before each batch is decoded: `false` answers it `503` (the
/// analysis behind it is full) and records nothing.
pub type GateHook = Arc<dyn Fn() -> bool + Send + Sync>;

/// Takes each ext_proc stream (`POST` on
/// [`PROCESS_PATH`](crate::intake::extproc::PROCESS_PATH), gRPC) once it is
/// over: its exchange, or why it could not be read.
pub type ExtProcHook = Arc<dyn Fn(Result<Exchange, String>) + Send + Sync>;

/// Told of each failed TLS handshake: the peer and why.
pub type TlsErrorHook = Arc<dyn Fn(SocketAddr, &str) + Send + Sync>;

/// A page served on `GET` (`/attacks`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub content_type: &'static str,
    pub body: String,
}

/// Answers `GET PATH`; `None` is a 404.
pub type PageHook = Arc<dyn Fn(&str) -> Option<Page> + Send + Sync>;

/// How to start a [`Node`]; `NodeConfig::default()` is what [`Node::start`]
/// uses.
#[derive(Clone)]
pub struct NodeConfig {
    /// Address to listen on; port `0` picks a free port.
    pub addr: SocketAddr,
    pub behavior: Behavior,
    /// Keep every batch in memory for [`Node::batches`] and
    /// [`Node::records`]. A long-running CLI turns this off and relies on
    /// `on_batch`; counts are kept either way.
    pub retain: bool,
    pub on_batch: Option<BatchHook>,
    pub gate: Option<GateHook>,
    pub pages: Option<PageHook>,
    /// Accept ext_proc streams too (an analysis node); without it they are
    /// taken for batches and refused.
    pub on_extproc: Option<ExtProcHook>,
    /// Serve TLS only, with this certificate.
    pub tls: Option<TlsConfig>,
    pub on_tls_error: Option<TlsErrorHook>,
    /// Headers every batch and ext_proc stream must carry; without them a
    /// batch is answered `401` and a stream `UNAUTHENTICATED`, unread.
    pub require_headers: RequiredHeaders,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            behavior: Behavior::Ok,
            retain: true,
            on_batch: None,
            gate: None,
            pages: None,
            on_extproc: None,
            tls: None,
            on_tls_error: None,
            require_headers: RequiredHeaders::default(),
        }
    }
}

impl fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeConfig")
            .field("addr", &self.addr)
            .field("behavior", &self.behavior)
            .field("retain", &self.retain)
            .field("on_batch", &self.on_batch.is_some())
            .field("gate", &self.gate.is_some())
            .field("pages", &self.pages.is_some())
            .field("on_extproc", &self.on_extproc.is_some())
            .field("tls", &self.tls.is_some())
            .field(
                "require_headers",
                &self.require_headers.names().collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a `wait_*` call returned without what it waited for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitError {
    /// The deadline passed; `got` is how many there were then.
    Timeout { wanted: usize, got: usize },
    /// A batch failed to decode: a writer bug, so waiting longer is pointless.
    Decode(DecodeError),
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::Timeout { wanted, got } => {
                write!(f, "timed out waiting for {wanted}, got {got}")
            }
            WaitError::Decode(e) => write!(f, "a batch failed to decode: {e}"),
        }
    }
}

impl std::error::Error for WaitError {}

/// A running (or stopped) test node. Dropping it stops it.
pub struct Node {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Option<Server>,
}

/// State shared by the test thread and the server tasks.
struct Shared {
    state: Mutex<State>,
    /// Wakes synchronous waiters.
    changed: Condvar,
    /// Wakes asynchronous waiters.
    notify: Notify,
    retain: bool,
    on_batch: Option<BatchHook>,
    gate: Option<GateHook>,
    pages: Option<PageHook>,
    on_extproc: Option<ExtProcHook>,
    tls: Option<TlsConfig>,
    on_tls_error: Option<TlsErrorHook>,
    require_headers: RequiredHeaders,
    counters: Counters,
}

/// The node's own counters, as `/metrics` shows them.
#[derive(Default)]
struct Counters {
    tls_handshakes: AtomicU64,
    tls_handshakes_failed: AtomicU64,
    requests_unauthenticated: AtomicU64,
}

#[derive(Default)]
struct State {
    behavior: Behavior,
    batches: Vec<BatchInfo>,
    batch_count: usize,
    record_count: usize,
    errors: Vec<DecodeError>,
}

/// The background thread serving one bind of the node.
struct Server {
    shutdown: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl Node {
    /// Starts a node on `127.0.0.1` with a free port, answering `204`.
    pub fn start() -> io::Result<Node> {
        Node::start_with(NodeConfig::default())
    }

    /// Starts a node on a given address (e.g. the one of a stopped node).
    pub fn start_on(addr: SocketAddr) -> io::Result<Node> {
        Node::start_with(NodeConfig {
            addr,
            ..NodeConfig::default()
        })
    }

    pub fn start_with(config: NodeConfig) -> io::Result<Node> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                behavior: config.behavior,
                ..State::default()
            }),
            changed: Condvar::new(),
            notify: Notify::new(),
            retain: config.retain,
            on_batch: config.on_batch,
            gate: config.gate,
            pages: config.pages,
            on_extproc: config.on_extproc,
            tls: config.tls,
            on_tls_error: config.on_tls_error,
            require_headers: config.require_headers,
            counters: Counters::default(),
        });
        let (addr, server) = Server::spawn(config.addr, Arc::clone(&shared))?;
        Ok(Node {
            addr,
            shared,
            server: Some(server),
        })
    }

    /// The bound address (with the real port when `0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://ADDR` (`https://` with TLS), to build URLs or cluster configs.
    pub fn url(&self) -> String {
        let scheme = if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// TLS handshakes completed (connections served), since the start.
    pub fn tls_handshakes(&self) -> u64 {
        self.shared.counters.tls_handshakes.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed or timed out: nothing of those connections
    /// was read.
    pub fn tls_handshakes_failed(&self) -> u64 {
        self.shared
            .counters
            .tls_handshakes_failed
            .load(Ordering::Relaxed)
    }

    /// Batches and ext_proc streams refused for a missing or wrong required
    /// header.
    pub fn requests_unauthenticated(&self) -> u64 {
        self.shared
            .counters
            .requests_unauthenticated
            .load(Ordering::Relaxed)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Changes how batches arriving from now on are answered.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.lock().behavior = behavior;
    }

    pub fn behavior(&self) -> Behavior {
        self.shared.lock().behavior
    }

    /// Every batch received so far (empty when `retain` is off).
    pub fn batches(&self) -> Vec<BatchInfo> {
        self.shared.lock().batches.clone()
    }

    /// Every record of every batch received so far, in arrival order.
    pub fn records(&self) -> Vec<Record> {
        all_records(&self.shared.lock())
    }

    pub fn batch_count(&self) -> usize {
        self.shared.lock().batch_count
    }

    pub fn record_count(&self) -> usize {
        self.shared.lock().record_count
    }

    /// Decoding errors of the batches received so far.
    pub fn errors(&self) -> Vec<DecodeError> {
        self.shared.lock().errors.clone()
    }

    /// Forgets every batch, record and error seen so far.
    pub fn clear(&self) {
        let mut state = self.shared.lock();
        state.batches.clear();
        state.batch_count = 0;
        state.record_count = 0;
        state.errors.clear();
    }

    /// Blocks until at least `n` records have arrived and returns all of them
    /// (possibly more than `n`). Fails early if a batch did not decode.
    pub fn wait_for_records(&self, n: usize, timeout: Duration) -> Result<Vec<Record>, WaitError> {
        self.wait_sync(timeout, |s| check_records(s, n))
            .unwrap_or_else(|| Err(timeout_records(&self.shared.lock(), n)))
    }

    /// Blocks until at least `n` batches have arrived and returns all of
    /// them. Batches that did not decode count too.
    pub fn wait_for_batches(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<BatchInfo>, WaitError> {
        self.wait_sync(timeout, |s| check_batches(s, n))
            .unwrap_or_else(|| Err(timeout_batches(&self.shared.lock(), n)))
    }

    /// Blocks until `done` holds for the batches received (it is called on
    /// each arrival); `false` on timeout.
    pub fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[BatchInfo]) -> bool,
    ) -> bool {
        self.wait_sync(timeout, |s| done(&s.batches).then_some(()))
            .is_some()
    }

    /// [`Node::wait_for_records`] for async code (needs a tokio runtime with
    /// timers, as `#[tokio::test]` has).
    pub async fn wait_for_records_async(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Record>, WaitError> {
        match self.wait_async(timeout, |s| check_records(s, n)).await {
            Some(result) => result,
            None => Err(timeout_records(&self.shared.lock(), n)),
        }
    }

    /// [`Node::wait_for_batches`] for async code.
    pub async fn wait_for_batches_async(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<BatchInfo>, WaitError> {
        match self.wait_async(timeout, |s| check_batches(s, n)).await {
            Some(result) => result,
            None => Err(timeout_batches(&self.shared.lock(), n)),
        }
    }

    /// [`Node::wait_until`] for async code.
    pub async fn wait_until_async(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[BatchInfo]) -> bool,
    ) -> bool {
        self.wait_async(timeout, |s| done(&s.batches).then_some(()))
            .await
            .is_some()
    }

    /// Kills the node: stops accepting, drops every open connection (pending
    /// answers are never sent) and frees the port. What was received is
    /// kept. Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// Stops the node if running and starts it again on the same address,
    /// keeping its behaviour and what it received.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let (_, server) = Server::spawn(self.addr, Arc::clone(&self.shared))?;
        self.server = Some(server);
        Ok(())
    }

    /// Waits on the condvar until `check` gives a result or the deadline
    /// passes. `check` runs under the state lock, at once and after every
    /// change, so no arrival can be missed between a check and the wait.
    fn wait_sync<R>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<R>,
    ) -> Option<R> {
        let deadline = Instant::now() + clamp(timeout);
        let mut state = self.shared.lock();
        loop {
            if let Some(result) = check(&state) {
                return Some(result);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                return None;
            }
            state = match self.shared.changed.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    async fn wait_async<R>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&State) -> Option<R>,
    ) -> Option<R> {
        let deadline = tokio::time::Instant::now() + clamp(timeout);
        loop {
            // Register interest before checking, so an arrival between the
            // check and the await still wakes us.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let result = {
                let state = self.shared.lock();
                check(&state)
            };
            if result.is_some() {
                return result;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("running", &self.is_running())
            .finish()
    }
}

/// Caps a timeout so that adding it to "now" cannot overflow.
fn clamp(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(365 * 24 * 3600))
}

fn all_records(state: &State) -> Vec<Record> {
    state
        .batches
        .iter()
        .flat_map(|b| b.records.iter().cloned())
        .collect()
}

fn first_error(state: &State) -> Option<WaitError> {
    state.errors.first().cloned().map(WaitError::Decode)
}

fn check_records(state: &State, n: usize) -> Option<Result<Vec<Record>, WaitError>> {
    if let Some(e) = first_error(state) {
        return Some(Err(e));
    }
    (state.record_count >= n).then(|| Ok(all_records(state)))
}

fn check_batches(state: &State, n: usize) -> Option<Result<Vec<BatchInfo>, WaitError>> {
    if let Some(e) = first_error(state) {
        return Some(Err(e));
    }
    (state.batch_count >= n).then(|| Ok(state.batches.clone()))
}

fn timeout_records(state: &State, n: usize) -> WaitError {
    WaitError::Timeout {
        wanted: n,
        got: state.record_count,
    }
}

fn timeout_batches(state: &State, n: usize) -> WaitError {
    WaitError::Timeout {
        wanted: n,
        got: state.batch_count,
    }
}

impl Counters {
    /// Appends the counters in Prometheus text format 0.0.4.
    fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        for (name, help, counter) in [
            (
                "tls_handshakes_total",
                "TLS handshakes completed (connections served over TLS).",
                &self.tls_handshakes,
            ),
            (
                "tls_handshakes_failed_total",
                "TLS handshakes that failed or timed out; nothing was read from those connections.",
                &self.tls_handshakes_failed,
            ),
            (
                "requests_unauthenticated_total",
                "Batches (401) and ext_proc streams (UNAUTHENTICATED) refused unread for a missing or wrong required header.",
                &self.requests_unauthenticated,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP oob_mirror_node_{name} {help}\n# TYPE oob_mirror_node_{name} counter\noob_mirror_node_{name} {}\n",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

impl Shared {
    /// Locks the state. A panic while holding the lock (only possible in a
    /// caller's `wait_until` closure) leaves consistent data, so poisoning is
    /// ignored rather than spreading the panic to every later call.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, batch: BatchInfo) {
        if let Some(hook) = &self.on_batch {
            hook(&batch);
        }
        {
            let mut state = self.lock();
            state.batch_count += 1;
            state.record_count += batch.records.len();
            if let Some(e) = &batch.error {
                state.errors.push(e.clone());
            }
            if self.retain {
                state.batches.push(batch);
            }
        }
        self.changed.notify_all();
        self.notify.notify_waiters();
    }
}

impl Server {
    /// Binds `addr` and serves it on a new thread with its own runtime.
    /// Binding happens here, so errors (address in use…) reach the caller
    /// and the port is accepting connections when this returns.
    fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<(SocketAddr, Server)> {
        // One thread is plenty for a test node, and keeps many nodes cheap.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            bind(addr)?
        };
        let bound = listener.local_addr()?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("oob-mirror-node {bound}"))
            .spawn(move || {
                runtime.block_on(serve(listener, shared, shutdown_rx));
                // Dropping the runtime cancels every connection task, which
                // closes their sockets: that is what makes `stop` a kill.
                drop(runtime);
            })?;
        Ok((bound, Server { shutdown, thread }))
    }

    fn stop(self) {
        // Errors only mean the thread is already gone.
        let _ = self.shutdown.send(());
        let _ = self.thread.join();
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // Lets a restarted node bind again while connections of its previous
    // life linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn serve(listener: TcpListener, shared: Arc<Shared>, mut shutdown: oneshot::Receiver<()>) {
    // `auto` reads the first bytes of each connection to tell an HTTP/2
    // prior-knowledge preface from HTTP/1.1.
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            // A dropped sender also ends the loop.
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            builder.clone(),
            stream,
            peer,
            Arc::clone(&shared),
        ));
    }
}

/// A client that connects and says nothing must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn connection(
    builder: auto::Builder<TokioExecutor>,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) {
    let _ = stream.set_nodelay(true);
    let tls = shared.tls.clone();
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |req| handle(req, Arc::clone(&shared)))
    };
    // A connection error (client reset, bad request) concerns that
    // connection only.
    let Some(tls) = tls else {
        let _ = builder
            .serve_connection(TokioIo::new(stream), service)
            .await;
        return;
    };
    let accepted = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match accepted {
        Ok(Ok(stream)) => stream,
        failed => {
            shared
                .counters
                .tls_handshakes_failed
                .fetch_add(1, Ordering::Relaxed);
            if let Some(hook) = &shared.on_tls_error {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
                };
                hook(peer, &why);
            }
            return;
        }
    };
    shared
        .counters
        .tls_handshakes
        .fetch_add(1, Ordering::Relaxed);
    let _ = builder
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Reply, Infallible> {
    // `/metrics` always (the node's own counters, after the analysis' ones);
    // other pages only on an analysis node, else a GET is a 405 like any
    // non-POST. Pages need no required header: they are for operators.
    if req.method() == Method::GET {
        let path = req.uri().path();
        let page = shared.pages.as_ref().and_then(|pages| pages(path));
        if path == "/metrics" {
            let mut body = page.map(|p| p.body).unwrap_or_default();
            shared.counters.write_metrics(&mut body);
            return Ok(page_reply(METRICS_TYPE, body));
        }
        if let Some(page) = page {
            return Ok(page_reply(page.content_type, page.body));
        }
        if shared.pages.is_some() {
            return Ok(reply(StatusCode::NOT_FOUND, "not found\n"));
        }
    }
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "POST batches only\n"));
    }
    let extproc = match (req.uri().path(), &shared.on_extproc) {
        (PROCESS_PATH, Some(hook)) => Some(Arc::clone(hook)),
        _ => None,
    };
    // Before anything is read: a sender without the secret gets nothing
    // more than the refusal.
    if !shared.require_headers.allow(req.headers()) {
        shared
            .counters
            .requests_unauthenticated
            .fetch_add(1, Ordering::Relaxed);
        return Ok(match extproc {
            Some(_) => grpc_refusal("16", "missing or wrong authentication header"),
            None => reply(
                StatusCode::UNAUTHORIZED,
                "missing or wrong authentication header\n",
            ),
        });
    }
    if let Some(hook) = extproc {
        if shared.gate.as_ref().is_some_and(|admit| !admit()) {
            return Ok(grpc_refusal("14", "analysis is behind"));
        }
        return Ok(extproc_stream(req, hook));
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        // Too large, or the client went away mid-body: nothing to record.
        Err(_) => return Ok(reply(StatusCode::PAYLOAD_TOO_LARGE, "")),
    };
    // The body is read first, so the connection stays usable for the retry.
    if shared.gate.as_ref().is_some_and(|admit| !admit()) {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "analysis is behind\n",
        ));
    }
    let (records, error) = match decode_batch(&body) {
        Ok(records) => (records, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let behavior = shared.lock().behavior;
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let error_text = error.as_ref().map(|e| format!("{e}\n"));
    shared.add(BatchInfo {
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.to_string()),
        http_version: format!("{:?}", parts.version),
        authority,
        headers: parts.headers,
        body_len: body.len(),
        records,
        error,
        behavior,
        received_at: Instant::now(),
    });

    if let Some(text) = error_text {
        return Ok(reply(StatusCode::BAD_REQUEST, &text));
    }
    Ok(match behavior {
        Behavior::Ok => reply(StatusCode::NO_CONTENT, ""),
        Behavior::Status(code) => reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "",
        ),
        Behavior::Delay(delay) => {
            tokio::time::sleep(delay).await;
            reply(StatusCode::OK, "")
        }
        Behavior::Hang => std::future::pending().await,
    })
}

/// Largest body kept per direction of an ext_proc stream (the rest is read
/// and dropped): Envoy's own client streams bodies whole.
const EXTPROC_MAX_BODY: usize = 16 << 20;

fn grpc_content_type(response: &mut Reply) {
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
}

/// A trailers-only gRPC answer: the status is in the headers, nothing of the
/// request is read.
fn grpc_refusal(status: &'static str, message: &'static str) -> Reply {
    let mut response = reply(StatusCode::OK, "");
    grpc_content_type(&mut response);
    let h = response.headers_mut();
    h.insert(
        "grpc-status",
        hyper::header::HeaderValue::from_static(status),
    );
    h.insert(
        "grpc-message",
        hyper::header::HeaderValue::from_static(message),
    );
    response
}

/// Answers an ext_proc stream: reads its messages as they come, ends the
/// stream (gRPC status 0) once the response is over or the client
/// half-closes, then hands the exchange over. In observability mode the
/// client reads no answer, so none is sent.
fn extproc_stream(req: Request<Incoming>, hook: ExtProcHook) -> Reply {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let mut incoming = req.into_body();
    tokio::spawn(async move {
        let mut stream = ExtProcStream::new(EXTPROC_MAX_BODY);
        let mut error = None;
        while let Some(frame) = incoming.frame().await {
            // A reset ends the stream like a half-close: analyse what came.
            let Ok(frame) = frame else { break };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            match stream.feed(&data) {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let mut trailers = HeaderMap::new();
        let status = if error.is_some() { "3" } else { "0" };
        trailers.insert(
            "grpc-status",
            hyper::header::HeaderValue::from_static(status),
        );
        let _ = tx.send_trailers(trailers).await;
        drop(tx);
        hook(match error {
            Some(e) => Err(e),
            None => stream
                .finish()
                .ok_or_else(|| "ext_proc stream without request headers".to_owned()),
        });
    });
    let mut response = Response::new(body.boxed());
    grpc_content_type(&mut response);
    response
}

fn page_reply(content_type: &'static str, body: String) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn reply(status: StatusCode, body: &str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *response.status_mut() = status;
    response
}
