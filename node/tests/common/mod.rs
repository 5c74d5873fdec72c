//! Helpers shared by the integration tests: batches written by hand with
//! `rmp`, and a bare hyper client.

// Test-only helpers: clippy.toml allows unwrap & co. in `#[test]` functions
// only, and a failed write here should fail the test just the same.
#![allow(dead_code, clippy::unwrap_used)]

pub mod pki;

use std::error::Error;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::client::conn::{http1, http2};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rmp::encode as enc;
use tokio::net::TcpStream;

pub type BoxError = Box<dyn Error + Send + Sync>;

fn str_entry(buf: &mut Vec<u8>, key: &str, value: &str) {
    enc::write_str(buf, key).unwrap();
    enc::write_str(buf, value).unwrap();
}

fn uint_entry(buf: &mut Vec<u8>, key: &str, value: u64) {
    enc::write_str(buf, key).unwrap();
    enc::write_uint(buf, value).unwrap();
}

fn bool_entry(buf: &mut Vec<u8>, key: &str, value: bool) {
    enc::write_str(buf, key).unwrap();
    enc::write_bool(buf, value).unwrap();
}

/// A header value as the filter sends it: str when UTF-8, bin otherwise.
pub enum Hv<'a> {
    S(&'a str),
    B(&'a [u8]),
}

/// Where a request record came from and went to.
struct Origin<'a> {
    method: &'a str,
    authority: &'a str,
    path: &'a str,
    protocol: &'a str,
    source: &'a str,
}

fn write_request(buf: &mut Vec<u8>, id: &str, o: &Origin, headers: &[(&str, Hv)], body: &[u8]) {
    enc::write_map_len(buf, 18).unwrap();
    uint_entry(buf, "v", 1);
    str_entry(buf, "kind", "request");
    str_entry(buf, "id", id);
    uint_entry(buf, "ts_ns", 1_764_621_249_000_000_000);
    str_entry(buf, "method", o.method);
    str_entry(buf, "scheme", "http");
    str_entry(buf, "authority", o.authority);
    str_entry(buf, "path", o.path);
    str_entry(buf, "protocol", o.protocol);
    str_entry(buf, "source", o.source);
    str_entry(buf, "destination", "10.0.0.1:8080");
    bool_entry(buf, "tls", false);
    write_headers(buf, headers);
    enc::write_str(buf, "trailers").unwrap();
    enc::write_array_len(buf, 0).unwrap();
    enc::write_str(buf, "body").unwrap();
    enc::write_bin(buf, body).unwrap();
    uint_entry(buf, "body_size", body.len() as u64);
    bool_entry(buf, "body_truncated", false);
    bool_entry(buf, "complete", true);
}

/// Appends a complete request record (`PUT /x`, HTTP/2) whose `x-bin`
/// header is a bin value.
pub fn push_request(buf: &mut Vec<u8>, id: &str, body: &[u8]) {
    let origin = Origin {
        method: "PUT",
        authority: "svc",
        path: "/x",
        protocol: "HTTP/2",
        source: "127.0.0.1:1",
    };
    write_request(buf, id, &origin, &[("x-bin", Hv::B(&[0xc3, 0x28]))], body);
}

/// Appends a request record with the given method, path, headers and body
/// (HTTP/1.1 from 203.0.113.7 to `api.example.com`).
pub fn push_http_request(
    buf: &mut Vec<u8>,
    id: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let origin = Origin {
        method,
        authority: "api.example.com",
        path,
        protocol: "HTTP/1.1",
        source: "203.0.113.7:40000",
    };
    let headers: Vec<(&str, Hv)> = headers.iter().map(|(n, v)| (*n, Hv::S(v))).collect();
    write_request(buf, id, &origin, &headers, body);
}

pub fn push_response(buf: &mut Vec<u8>, id: &str, status: u64) {
    push_http_response(buf, id, status, &[], b"ok");
}

pub fn push_http_response(
    buf: &mut Vec<u8>,
    id: &str,
    status: u64,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    enc::write_map_len(buf, 13).unwrap();
    uint_entry(buf, "v", 1);
    str_entry(buf, "kind", "response");
    str_entry(buf, "id", id);
    uint_entry(buf, "ts_ns", 1_764_621_249_001_000_000);
    uint_entry(buf, "status", status);
    str_entry(buf, "details", "via_upstream");
    let headers: Vec<(&str, Hv)> = headers.iter().map(|(n, v)| (*n, Hv::S(v))).collect();
    write_headers(buf, &headers);
    enc::write_str(buf, "trailers").unwrap();
    enc::write_array_len(buf, 0).unwrap();
    enc::write_str(buf, "body").unwrap();
    enc::write_bin(buf, body).unwrap();
    uint_entry(buf, "body_size", body.len() as u64);
    bool_entry(buf, "body_truncated", false);
    bool_entry(buf, "complete", true);
    uint_entry(buf, "duration_us", 10);
}

fn write_headers(buf: &mut Vec<u8>, headers: &[(&str, Hv)]) {
    enc::write_str(buf, "headers").unwrap();
    enc::write_array_len(buf, headers.len() as u32).unwrap();
    for (name, value) in headers {
        enc::write_array_len(buf, 2).unwrap();
        enc::write_str(buf, name).unwrap();
        match value {
            Hv::S(v) => enc::write_str(buf, v).unwrap(),
            Hv::B(v) => enc::write_bin(buf, v).unwrap(),
        }
    }
}

/// One exchange: its request and response records.
pub fn exchange(id: &str) -> Vec<u8> {
    let mut buf = Vec::new();
    push_request(&mut buf, id, b"payload");
    push_response(&mut buf, id, 200);
    buf
}

/// POSTs a batch the way the filter does, over a new connection, with
/// HTTP/2 prior knowledge when `h2`.
pub async fn post(
    addr: SocketAddr,
    h2: bool,
    records: usize,
    body: Vec<u8>,
) -> Result<StatusCode, BoxError> {
    send(addr, h2, Method::POST, records, body).await
}

pub async fn send(
    addr: SocketAddr,
    h2: bool,
    method: Method,
    records: usize,
    body: Vec<u8>,
) -> Result<StatusCode, BoxError> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    send_on(io, h2, method, records, body, &[]).await
}

/// Sends one batch on an open connection (plain or TLS), with extra headers.
pub async fn send_on<I>(
    io: I,
    h2: bool,
    method: Method,
    records: usize,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> Result<StatusCode, BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // HTTP/2 takes the authority from the URI, HTTP/1.1 from `Host`.
    let uri = if h2 {
        "http://oob-mirror/v1/records"
    } else {
        "/v1/records"
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/msgpack")
        .header("x-oob-mirror-version", "1")
        .header("x-oob-mirror-records", records.to_string());
    if !h2 {
        req = req.header("host", "oob-mirror");
    }
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body)))?;
    let status = if h2 {
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?.status()
    } else {
        let (mut sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn);
        sender.send_request(req).await?.status()
    };
    Ok(status)
}

/// Opens an ext_proc stream (`Process`, HTTP/2 prior knowledge) with one empty gRPC message
/// and `extra` headers; returns the status and the `grpc-status` and `grpc-message` headers
/// (a trailers-only answer: the node refused the stream unread).
pub async fn open_process_stream(
    addr: SocketAddr,
    extra: &[(&str, &str)],
) -> Result<(StatusCode, Option<String>, Option<String>), BoxError> {
    use http_body_util::BodyExt;
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let path = oob_mirror_node::intake::extproc::PROCESS_PATH;
    let mut req = Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (grpc, message) = (header("grpc-status"), header("grpc-message"));
    let _ = resp.into_body().collect().await;
    Ok((status, grpc, message))
}

/// `GET path` over HTTP/1.1 on an open connection: status and body as text.
pub async fn get_on<I>(io: I, path: &str) -> Result<(StatusCode, String), BoxError>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, conn) = http1::handshake(io).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(path)
        .header("host", "node")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A TLS client that trusts only `ca_pem` and offers `alpn`.
pub fn tls_connector(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Connects over TLS, checking the node's certificate for `server_name`; the
/// stream and the protocol agreed by ALPN.
pub async fn tls_connect(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    server_name: &str,
) -> Result<
    (
        TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
        Option<Vec<u8>>,
    ),
    BoxError,
> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let tcp = TcpStream::connect(addr).await?;
    let tls = connector.connect(name, tcp).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((TokioIo::new(tls), alpn))
}

/// [`post`] from synchronous code.
pub fn post_blocking(
    addr: SocketAddr,
    h2: bool,
    records: usize,
    body: Vec<u8>,
) -> Result<StatusCode, BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(post(addr, h2, records, body))
}

/// `GET path` over HTTP/1.1: status and body as text.
pub fn get_blocking(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), BoxError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async { get_on(TokioIo::new(TcpStream::connect(addr).await?), path).await })
}

/// Five attacks and one benign call, each with its response, as the filter would send them
/// (12 records): `seed` GET /etc/passwd (LFI), `sqli`, `xss` (a JSON body), `cmd` (a form
/// body running a command on /etc/passwd), `leak` (an SQL error in a 500 response) and the
/// benign `benign` GET /api/users/42.
pub fn attack_batch() -> Vec<u8> {
    let base = [
        ("host", "api.example.com"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "*/*"),
    ];
    let mut batch = Vec::new();
    let exchanges: [(&str, &str, &str, &[u8]); 5] = [
        ("seed", "GET", "/etc/passwd", b""),
        (
            "sqli",
            "GET",
            "/api/products?id=1%27%20OR%20%271%27%3D%271",
            b"",
        ),
        (
            "xss",
            "POST",
            "/api/comments",
            br#"{"comment":"<script>alert(document.cookie)</script>"}"#,
        ),
        (
            "cmd",
            "POST",
            "/api/ping",
            b"host=127.0.0.1%3Bcat%20/etc/passwd",
        ),
        ("benign", "GET", "/api/users/42", b""),
    ];
    for (id, method, path, body) in exchanges {
        let len = body.len().to_string();
        let mut headers = base.to_vec();
        if id == "xss" {
            headers.push(("content-type", "application/json"));
        }
        if id == "cmd" {
            headers.push(("content-type", "application/x-www-form-urlencoded"));
        }
        if !body.is_empty() {
            headers.push(("content-length", &len));
        }
        push_http_request(&mut batch, id, method, path, &headers, body);
        push_http_response(
            &mut batch,
            id,
            200,
            &[("content-type", "application/json")],
            b"{}",
        );
    }
    push_http_request(&mut batch, "leak", "GET", "/api/reports/7", &base, b"");
    push_http_response(
        &mut batch,
        "leak",
        500,
        &[("content-type", "text/html")],
        b"<p>You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version</p>",
    );
    batch
}

pub fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("oob-mirror-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A SQLite store in a directory of its own (removed by the caller).
pub fn temp_store(what: &str) -> (std::path::PathBuf, oob_mirror_node::store::StoreConfig) {
    let dir = tempdir(&format!("{what}-store"));
    let _ = std::fs::remove_file(dir.join("attacks.sqlite"));
    let store = oob_mirror_node::store::StoreConfig {
        store: Some(oob_mirror_node::store::Backend::Sqlite(
            dir.join("attacks.sqlite"),
        )),
        // The batches are dated 2025-12-01: older than the default 30 days kept.
        max_age: None,
        ..oob_mirror_node::store::StoreConfig::default()
    };
    (dir, store)
}

/// The node as the binary runs it, on a free port, with this store.
pub fn start_node(store: &oob_mirror_node::store::StoreConfig) -> oob_mirror_node::app::App {
    oob_mirror_node::app::App::start(oob_mirror_node::app::AppConfig {
        pool: oob_mirror_node::analysis::pool::PoolConfig {
            threads: 1,
            ..oob_mirror_node::analysis::pool::PoolConfig::default()
        },
        store: Some(store.clone()),
        ..oob_mirror_node::app::AppConfig::new(([127, 0, 0, 1], 0).into())
    })
    .unwrap()
}

/// Sends [`attack_batch`] and waits until its six exchanges are analysed and the five attacks
/// written.
pub fn seed_attacks(node: &oob_mirror_node::app::App) {
    use std::time::{Duration, Instant};
    assert_eq!(
        post_blocking(node.addr(), false, 12, attack_batch()).unwrap(),
        StatusCode::NO_CONTENT
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.detector().snapshot().exchanges_analysed < 6 {
        assert!(
            Instant::now() < deadline,
            "not analysed: {:?}",
            node.detector().snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(node.flush_store(Duration::from_secs(10)));
}
