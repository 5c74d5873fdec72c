//! The recording test node: a real oob-mirror listener (the node's own
//! [`Server`](oob_mirror_node::intake::server::Server)) that keeps every batch it receives and
//! answers as a test scripts it, to play a healthy, failing, slow or dead node.
//!
//! Every method is synchronous and quick, except the `wait_*` ones, which block (use the
//! `*_async` variants from async code). [`Node::stop`] kills it (open connections are dropped,
//! the port is freed) and [`Node::restart`] brings it back on the same address.
//!
//! A test double: it lives with the tests, never in the product.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use oob_mirror_node::intake::server::{
    BatchHandler, BoxFuture, Counters, ExtProcHook, GateHook, PageHandler, Server, ServerConfig,
};
use oob_mirror_node::{DecodeError, Record, RequiredHeaders, TlsConfig};
use tokio::sync::Notify;

pub use oob_mirror_node::intake::server::{BatchInfo, Page, TlsErrorHook};

/// Called for every batch, before the batch is kept.
pub type BatchHook = Arc<dyn Fn(&BatchInfo) + Send + Sync>;

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

/// How to start a [`Node`]; `NodeConfig::default()` is what [`Node::start`] uses.
#[derive(Clone)]
pub struct NodeConfig {
    /// Address to listen on; port `0` picks a free port.
    pub addr: SocketAddr,
    pub behavior: Behavior,
    /// Keep every batch in memory for [`Node::batches`] and [`Node::records`]; counts are
    /// kept either way.
    pub retain: bool,
    pub on_batch: Option<BatchHook>,
    pub gate: Option<GateHook>,
    pub pages: Option<PageHandler>,
    /// Accept ext_proc streams too; without it they are taken for batches and refused.
    pub on_extproc: Option<ExtProcHook>,
    /// Serve TLS only, with this certificate.
    pub tls: Option<TlsConfig>,
    pub on_tls_error: Option<TlsErrorHook>,
    /// Headers every batch and ext_proc stream must carry.
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
            .field("tls", &self.tls.is_some())
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
    server_config: ServerConfig,
    counters: Arc<Counters>,
    server: Option<Server>,
}

/// State shared by the test thread and the server's batch handler.
struct Shared {
    state: Mutex<State>,
    /// Wakes synchronous waiters.
    changed: Condvar,
    /// Wakes asynchronous waiters.
    notify: Notify,
    retain: bool,
    on_batch: Option<BatchHook>,
}

#[derive(Default)]
struct State {
    behavior: Behavior,
    batches: Vec<BatchInfo>,
    batch_count: usize,
    record_count: usize,
    errors: Vec<DecodeError>,
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
        });
        let handler: BatchHandler = {
            let shared = Arc::clone(&shared);
            Arc::new(move |batch| shared.add(batch))
        };
        let server_config = ServerConfig {
            addr: config.addr,
            on_batch: handler,
            gate: config.gate,
            pages: config.pages,
            on_extproc: config.on_extproc,
            tls: config.tls,
            on_tls_error: config.on_tls_error,
            require_headers: config.require_headers,
        };
        let counters = Arc::new(Counters::default());
        let server = Server::start_counting(server_config.clone(), Arc::clone(&counters))?;
        Ok(Node {
            addr: server.addr(),
            shared,
            server_config,
            counters,
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
        let scheme = if self.server_config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// TLS handshakes completed (connections served), since the start.
    pub fn tls_handshakes(&self) -> u64 {
        self.counters.tls_handshakes.load(Ordering::Relaxed)
    }

    /// TLS handshakes that failed or timed out: nothing of those connections
    /// was read.
    pub fn tls_handshakes_failed(&self) -> u64 {
        self.counters.tls_handshakes_failed.load(Ordering::Relaxed)
    }

    /// Batches and ext_proc streams refused for a missing or wrong required
    /// header.
    pub fn requests_unauthenticated(&self) -> u64 {
        self.counters
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
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }

    /// Stops the node if running and starts it again on the same address,
    /// keeping its behaviour and what it received.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let config = ServerConfig {
            addr: self.addr,
            ..self.server_config.clone()
        };
        self.server = Some(Server::start_counting(config, Arc::clone(&self.counters))?);
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

impl Shared {
    /// Locks the state. A panic while holding the lock (only possible in a
    /// caller's `wait_until` closure) leaves consistent data, so poisoning is
    /// ignored rather than spreading the panic to every later call.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the batch and answers it as the behaviour in force says.
    fn add(&self, batch: BatchInfo) -> BoxFuture<u16> {
        if let Some(hook) = &self.on_batch {
            hook(&batch);
        }
        let behavior = {
            let mut state = self.lock();
            state.batch_count += 1;
            state.record_count += batch.records.len();
            if let Some(e) = &batch.error {
                state.errors.push(e.clone());
            }
            if self.retain {
                state.batches.push(batch);
            }
            state.behavior
        };
        self.changed.notify_all();
        self.notify.notify_waiters();
        match behavior {
            Behavior::Ok => Box::pin(std::future::ready(204)),
            // A number that is no status is answered 500 by the server.
            Behavior::Status(code) => Box::pin(std::future::ready(code)),
            Behavior::Delay(delay) => Box::pin(async move {
                tokio::time::sleep(delay).await;
                200
            }),
            Behavior::Hang => Box::pin(std::future::pending()),
        }
    }
}
