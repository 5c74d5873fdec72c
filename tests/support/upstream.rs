//! The test upstream: a real hyper 1 server (HTTP/1.1 and h2c, auto-detected)
//! on a free port, run by its own tokio runtime.
//!
//! Routes:
//! - `/download/<n>`: `n` bytes of [`pattern`];
//! - `/image/<n>`: the same as `image/png`;
//! - `/stream/<ms>`: [`STREAM_CHUNKS`] chunks spread over `<ms>` milliseconds;
//! - `/trailers`: body [`TRAILERS_BODY`], plus trailer `x-checksum: abc` to an
//!   HTTP/2 client;
//! - `/upload-sha`: `{"len": <bytes received>, "fnv1a64": "<hex>"}`;
//! - `/status/<code>`: that status with body `status <code>`;
//! - `/db-error`: `500`, an HTML page leaking a MySQL error ([`DB_ERROR_PAGE`]);
//! - `/shop/…`: the synthetic shop API of API discovery's test ([`super::shop::answer`]);
//! - anything else: echo, `200` with a JSON [`Echo`] of the request.
//!
//! The echo and `/upload-sha` routes read the request body frame by frame and
//! count its bytes as they arrive ([`Upstream::body_bytes_received`]), so a
//! test can see a body that is still incomplete reach the upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};

pub const TRAILERS_BODY: &str = "trailers-body";
pub const STREAM_CHUNKS: usize = 10;
/// What an application that lets database errors through answers.
pub const DB_ERROR_PAGE: &str = "<html><body><h1>Internal error</h1><p>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near ''' at line 1</p></body></html>";

type Body = BoxBody<Bytes, Infallible>;

/// The deterministic download pattern: byte `i` is `i % 251`.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// FNV-1a 64 of `data`, as 16 hex digits.
pub fn fnv1a64(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One chunk of `/stream/<ms>`.
pub fn stream_chunk(i: usize) -> String {
    format!("chunk-{i}\n")
}

pub struct Upstream {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
}

/// Shared counters of one upstream, updated by its connections.
#[derive(Clone)]
struct Counters {
    requests: Arc<AtomicU64>,
    body_bytes: Arc<AtomicU64>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-upstream")
            .enable_all()
            .build()
            .expect("upstream runtime");
        let (std_listener, addr) = super::ports::bind_free();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let counters = Counters {
            requests: Arc::new(AtomicU64::new(0)),
            body_bytes: Arc::new(AtomicU64::new(0)),
        };
        let (requests, body_bytes) = (counters.requests.clone(), counters.body_bytes.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let counters = counters.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        counters.requests.fetch_add(1, Ordering::Relaxed);
                        handle(req, counters.body_bytes.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            runtime: Some(runtime),
            addr,
            requests,
            body_bytes,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Request body bytes the echo and `/upload-sha` routes have read so far,
    /// over all requests, counted as each frame arrives (before the body is
    /// complete).
    pub fn body_bytes_received(&self) -> u64 {
        self.body_bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

fn response(status: StatusCode, content_type: &'static str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static("test"));
    resp
}

fn header_list(map: &HeaderMap) -> Value {
    Value::Array(
        map.iter()
            .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect(),
    )
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        _ => "other",
    }
}

/// Reads a request body to its end, adding each data frame's length to
/// `counter` as it arrives; returns the body and its trailers.
async fn read_body_counting(
    mut body: Incoming,
    counter: &AtomicU64,
) -> Result<(Bytes, Option<HeaderMap>), hyper::Error> {
    let mut data = Vec::new();
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(HeaderMap::new).extend(t);
                }
            }
        }
    }
    Ok((Bytes::from(data), trailers))
}

async fn handle(
    req: Request<Incoming>,
    body_bytes: Arc<AtomicU64>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let version = req.version();
    if let Some(n) = path.strip_prefix("/download/") {
        let n: usize = n.parse().unwrap_or(0);
        let _ = req.into_body().collect().await;
        return Ok(response(
            StatusCode::OK,
            "application/octet-stream",
            full(pattern(n)),
        ));
    }
    if let Some(n) = path.strip_prefix("/image/") {
        let n: usize = n.parse().unwrap_or(0);
        let _ = req.into_body().collect().await;
        return Ok(response(StatusCode::OK, "image/png", full(pattern(n))));
    }
    if let Some(ms) = path.strip_prefix("/stream/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        let _ = req.into_body().collect().await;
        let (mut tx, body) = Channel::<Bytes, Infallible>::new(STREAM_CHUNKS);
        let gap = Duration::from_millis(ms / STREAM_CHUNKS as u64);
        tokio::spawn(async move {
            for i in 0..STREAM_CHUNKS {
                if tx.send_data(Bytes::from(stream_chunk(i))).await.is_err() {
                    return;
                }
                // Paced on purpose: the route is a slow, streaming response.
                tokio::time::sleep(gap).await;
            }
        });
        return Ok(response(StatusCode::OK, "text/plain", body.boxed()));
    }
    if path == "/trailers" {
        let _ = req.into_body().collect().await;
        if version == Version::HTTP_2 {
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(2);
            tokio::spawn(async move {
                let _ = tx
                    .send_data(Bytes::from_static(TRAILERS_BODY.as_bytes()))
                    .await;
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", HeaderValue::from_static("abc"));
                let _ = tx.send_trailers(trailers).await;
            });
            return Ok(response(StatusCode::OK, "text/plain", body.boxed()));
        }
        return Ok(response(StatusCode::OK, "text/plain", full(TRAILERS_BODY)));
    }
    if path.starts_with("/shop/") {
        let method = req.method().to_string();
        let _ = req.into_body().collect().await;
        let (status, body) = super::shop::answer(&method, &path);
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(response(status, "application/json", full(body)));
    }
    if path == "/db-error" {
        let _ = req.into_body().collect().await;
        return Ok(response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/html",
            full(DB_ERROR_PAGE),
        ));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let _ = req.into_body().collect().await;
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        return Ok(response(
            status,
            "text/plain",
            full(format!("status {}", status.as_u16())),
        ));
    }
    let method = req.method().to_string();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_default();
    let headers = header_list(req.headers());
    let (body, trailers) = match read_body_counting(req.into_body(), &body_bytes).await {
        Ok(c) => c,
        Err(e) => {
            return Ok(response(
                StatusCode::BAD_REQUEST,
                "text/plain",
                full(format!("body error: {e}")),
            ))
        }
    };
    let trailers = trailers
        .as_ref()
        .map(header_list)
        .unwrap_or(Value::Array(Vec::new()));
    if path == "/upload-sha" {
        let v = json!({ "len": body.len(), "fnv1a64": fnv1a64(&body) });
        return Ok(response(
            StatusCode::OK,
            "application/json",
            full(v.to_string()),
        ));
    }
    let v = json!({
        "method": method,
        "path": path_and_query,
        "version": version_str(version),
        "body_len": body.len(),
        "body_fnv1a64": fnv1a64(&body),
        "headers": headers,
        "trailers": trailers,
    });
    Ok(response(
        StatusCode::OK,
        "application/json",
        full(v.to_string()),
    ))
}

/// The echo route's answer, parsed.
#[derive(Debug, Clone)]
pub struct Echo {
    pub method: String,
    pub path: String,
    pub version: String,
    pub body_len: u64,
    pub body_fnv1a64: String,
    pub headers: Vec<(String, String)>,
    pub trailers: Vec<(String, String)>,
}

impl Echo {
    pub fn parse(body: &[u8]) -> Echo {
        let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "echo body is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let s = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let list = |k: &str| -> Vec<(String, String)> {
            v.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|p| {
                            let n = p.get(0)?.as_str()?;
                            let val = p.get(1)?.as_str()?;
                            Some((n.to_string(), val.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        Echo {
            method: s("method"),
            path: s("path"),
            version: s("version"),
            body_len: v.get("body_len").and_then(Value::as_u64).unwrap_or(0),
            body_fnv1a64: s("body_fnv1a64"),
            headers: list("headers"),
            trailers: list("trailers"),
        }
    }

    /// The first value of header `name` as the upstream saw it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request id Envoy forwarded (`x-request-id`).
    pub fn request_id(&self) -> String {
        self.header("x-request-id")
            .unwrap_or_else(|| panic!("upstream saw no x-request-id: {self:?}"))
            .to_string()
    }
}
