//! The node's listener: HTTP/1.1 and HTTP/2 with prior knowledge ("h2c"), detected per
//! connection, or TLS only when given a [`TlsConfig`] (h2 and http/1.1 by ALPN).
//!
//! - `POST` on any path is a batch (docs/wire-format.md), decoded and handed to
//!   [`ServerConfig::on_batch`], which says how to answer it;
//! - `POST` on [`PROCESS_PATH`] is an Envoy ext_proc stream (observability mode);
//! - `GET` is a page or the API ([`ServerConfig::pages`]); `/metrics` always, with the
//!   listener's own counters last.
//!
//! The server runs on its own thread with its own runtime, so it starts and stops from plain
//! synchronous code; [`Server::stop`] drops every open connection and frees the port.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::intake::extproc::{ExtProcStream, PROCESS_PATH};
use crate::intake::record::Record;
use crate::intake::security::{RequiredHeaders, TlsConfig};
use crate::intake::wire::{decode_batch, DecodeError};
use crate::pairing::Exchange;

/// Largest batch body accepted; far above the filter's `batch.max_bytes` default (1 MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// One batch as received.
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

/// Takes every batch (a batch that did not decode too, with its error) and says which status
/// answers it once decoded; one that did not decode is answered `400` whatever it says.
pub type BatchHandler = Arc<dyn Fn(BatchInfo) -> BoxFuture<u16> + Send + Sync>;

/// Asked before each batch is decoded and each stream is read: `false` answers `503` (a
/// stream `UNAVAILABLE`): the analysis behind it is full.
pub type GateHook = Arc<dyn Fn() -> bool + Send + Sync>;

/// Takes each ext_proc stream once it is over: its exchange, or why it could not be read.
pub type ExtProcHook = Arc<dyn Fn(Result<Exchange, String>) + Send + Sync>;

/// Told of each failed TLS handshake: the peer and why.
pub type TlsErrorHook = Arc<dyn Fn(SocketAddr, &str) + Send + Sync>;

/// An answer to a `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Page {
    pub fn ok(content_type: &'static str, body: impl Into<Bytes>) -> Page {
        Page {
            status: 200,
            content_type,
            body: body.into(),
        }
    }
}

/// Answers `GET` (path and query in the `Uri`); `None` is a 404.
pub type PageHandler = Arc<dyn Fn(Uri) -> BoxFuture<Option<Page>> + Send + Sync>;

/// How to start a [`Server`].
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to listen on; port `0` picks a free port.
    pub addr: SocketAddr,
    pub on_batch: BatchHandler,
    pub gate: Option<GateHook>,
    pub pages: Option<PageHandler>,
    /// Accept ext_proc streams too; without it they are taken for batches and refused.
    pub on_extproc: Option<ExtProcHook>,
    /// Serve TLS only, with this certificate.
    pub tls: Option<TlsConfig>,
    pub on_tls_error: Option<TlsErrorHook>,
    /// Headers every batch and ext_proc stream must carry; without them a batch is answered
    /// `401` and a stream `UNAUTHENTICATED`, unread.
    pub require_headers: RequiredHeaders,
}

impl Default for ServerConfig {
    /// Loopback, a free port, every batch acknowledged `204`.
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            on_batch: Arc::new(|_| Box::pin(std::future::ready(204))),
            gate: None,
            pages: None,
            on_extproc: None,
            tls: None,
            on_tls_error: None,
            require_headers: RequiredHeaders::default(),
        }
    }
}

/// The listener's own counters, as `/metrics` shows them.
#[derive(Debug, Default)]
pub struct Counters {
    pub tls_handshakes: AtomicU64,
    pub tls_handshakes_failed: AtomicU64,
    pub requests_unauthenticated: AtomicU64,
}

/// A running listener. Dropping it stops it.
pub struct Server {
    addr: SocketAddr,
    counters: Arc<Counters>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    config: ServerConfig,
    counters: Arc<Counters>,
}

impl Server {
    /// Binds and serves on a new thread. Binding happens here, so errors (address in use…)
    /// reach the caller and the port accepts connections when this returns.
    pub fn start(config: ServerConfig) -> io::Result<Server> {
        Server::start_counting(config, Arc::default())
    }

    /// The same, adding to counters that outlive this server (a restarted test node).
    pub fn start_counting(config: ServerConfig, counters: Arc<Counters>) -> io::Result<Server> {
        // One thread: analysis runs on threads of its own, and a page waits on the store's.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = {
            let _context = runtime.enter();
            bind(config.addr)?
        };
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            config,
            counters: Arc::clone(&counters),
        });
        let thread = std::thread::Builder::new()
            .name(format!("oob-mirror-node {addr}"))
            .spawn(move || {
                runtime.block_on(serve(listener, shared, shutdown_rx));
                // Dropping the runtime cancels every connection task, which closes their
                // sockets: that is what makes `stop` a kill.
                drop(runtime);
            })?;
        Ok(Server {
            addr,
            counters,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The bound address (with the real port when `0` was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn stop(&mut self) {
        // Errors only mean the thread is already gone.
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Counters {
    /// Appends the counters in Prometheus text format 0.0.4.
    pub fn write_metrics(&self, out: &mut String) {
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
    let tls = shared.config.tls.clone();
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
            if let Some(hook) = &shared.config.on_tls_error {
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
        let uri = req.uri().clone();
        let is_metrics = uri.path() == "/metrics";
        let page = match &shared.config.pages {
            Some(pages) => pages(uri).await,
            None => None,
        };
        if is_metrics {
            let mut body = page.map(|p| p.body.to_vec()).unwrap_or_default();
            let mut own = String::new();
            shared.counters.write_metrics(&mut own);
            body.extend_from_slice(own.as_bytes());
            return Ok(page_reply(Page::ok(METRICS_TYPE, body)));
        }
        if let Some(page) = page {
            return Ok(page_reply(page));
        }
        if shared.config.pages.is_some() {
            return Ok(reply(StatusCode::NOT_FOUND, "not found\n"));
        }
    }
    if req.method() != Method::POST {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "POST batches only\n"));
    }
    let extproc = match (req.uri().path(), &shared.config.on_extproc) {
        (PROCESS_PATH, Some(hook)) => Some(Arc::clone(hook)),
        _ => None,
    };
    // Before anything is read: a sender without the secret gets nothing
    // more than the refusal.
    if !shared.config.require_headers.allow(req.headers()) {
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
        if shared.config.gate.as_ref().is_some_and(|admit| !admit()) {
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
    if shared.config.gate.as_ref().is_some_and(|admit| !admit()) {
        return Ok(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "analysis is behind\n",
        ));
    }
    let (records, error) = match decode_batch(&body) {
        Ok(records) => (records, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let authority = parts.uri.authority().map(|a| a.to_string()).or_else(|| {
        parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let error_text = error.as_ref().map(|e| format!("{e}\n"));
    let answer = (shared.config.on_batch)(BatchInfo {
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
        received_at: Instant::now(),
    });
    if let Some(text) = error_text {
        return Ok(reply(StatusCode::BAD_REQUEST, &text));
    }
    let status = answer.await;
    Ok(reply(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "",
    ))
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

fn page_reply(page: Page) -> Reply {
    let mut response = Response::new(Full::new(page.body).boxed());
    *response.status_mut() = StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(page.content_type),
    );
    response
}

fn reply(status: StatusCode, body: &str) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())).boxed());
    *response.status_mut() = status;
    response
}
