//! Client helpers: hyper 1 clients for HTTP/1.1 and HTTP/2 prior knowledge
//! (h2c), full or chunked request bodies, request trailers (HTTP/2), and a
//! streaming reader for responses.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

#[derive(Debug, Clone)]
pub enum ReqBody {
    Empty,
    Full(Vec<u8>),
    /// Sent as separate frames (HTTP/1.1: `transfer-encoding: chunked`, one
    /// chunk each), a few milliseconds apart.
    Chunks(Vec<Vec<u8>>),
}

#[derive(Debug, Clone)]
pub struct Req {
    pub proto: Proto,
    pub method: String,
    /// Path with query string.
    pub path: String,
    /// In order; the HTTP/1.1 `host` header is added first automatically unless one is here.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: ReqBody,
    /// Request trailers (HTTP/2 only).
    pub trailers: Vec<(String, String)>,
}

impl Req {
    pub fn new(proto: Proto, method: &str, path: &str) -> Req {
        Req {
            proto,
            method: method.to_string(),
            path: path.to_string(),
            headers: Vec::new(),
            body: ReqBody::Empty,
            trailers: Vec::new(),
        }
    }

    pub fn get(path: &str) -> Req {
        Req::new(Proto::H1, "GET", path)
    }

    pub fn post(path: &str, body: impl Into<Vec<u8>>) -> Req {
        Req::new(Proto::H1, "POST", path).body(body)
    }

    pub fn proto(mut self, proto: Proto) -> Req {
        self.proto = proto;
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Req {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Req {
        self.body = ReqBody::Full(body.into());
        self
    }

    pub fn chunks(mut self, chunks: Vec<Vec<u8>>) -> Req {
        self.body = ReqBody::Chunks(chunks);
        self
    }

    pub fn trailer(mut self, name: &str, value: &str) -> Req {
        self.trailers.push((name.to_string(), value.to_string()));
        self
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// In order, names lower-case, values raw.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The client's end of the connection (the `source` Envoy sees).
    pub local_addr: Option<SocketAddr>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type ReqBodyType = BoxBody<Bytes, Infallible>;

fn header_vec(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn build_request(addr: SocketAddr, req: &Req) -> Result<Request<ReqBodyType>, String> {
    let has_trailers = !req.trailers.is_empty();
    let body: ReqBodyType = match (&req.body, has_trailers) {
        (ReqBody::Empty, false) => Empty::new().boxed(),
        (ReqBody::Full(b), false) => Full::new(Bytes::from(b.clone())).boxed(),
        (body, _) => {
            let chunks = match body {
                ReqBody::Empty => Vec::new(),
                ReqBody::Full(b) => vec![b.clone()],
                ReqBody::Chunks(c) => c.clone(),
            };
            let mut trailers = HeaderMap::new();
            for (n, v) in &req.trailers {
                let name = HeaderName::from_bytes(n.as_bytes()).map_err(|e| e.to_string())?;
                let value = HeaderValue::from_str(v).map_err(|e| e.to_string())?;
                trailers.append(name, value);
            }
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                for chunk in chunks {
                    if tx.send_data(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                    // Paced on purpose: a gap makes each chunk its own
                    // frame / HTTP/1.1 chunk on the wire, not one coalesced write.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                if has_trailers {
                    let _ = tx.send_trailers(trailers).await;
                }
            });
            body.boxed()
        }
    };
    let uri = match req.proto {
        Proto::H1 => req.path.clone(),
        Proto::H2 => format!("http://{addr}{}", req.path),
    };
    let mut builder = Request::builder().method(req.method.as_str()).uri(uri);
    // A request may name its own host (the `:authority` Envoy sees).
    let own_host = req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"));
    if req.proto == Proto::H1 && !own_host {
        builder = builder.header("host", addr.to_string());
    }
    for (n, v) in &req.headers {
        let value = HeaderValue::from_bytes(v).map_err(|e| e.to_string())?;
        builder = builder.header(n.as_str(), value);
    }
    builder = builder.version(match req.proto {
        Proto::H1 => hyper::Version::HTTP_11,
        Proto::H2 => hyper::Version::HTTP_2,
    });
    builder.body(body).map_err(|e| e.to_string())
}

/// Sends `req` on a new connection and returns the response head (the body
/// still to read) and the client's local address.
pub async fn send_head(
    addr: SocketAddr,
    req: &Req,
) -> Result<(Response<Incoming>, SocketAddr), String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let request = build_request(addr, req)?;
    let head = match req.proto {
        Proto::H1 => {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("h1 request: {e}"))
        }
        Proto::H2 => {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| format!("h2 request: {e}"))
        }
    }?;
    Ok((head, local))
}

/// Reads a whole response.
pub async fn read_all(
    resp: Response<Incoming>,
    local_addr: Option<SocketAddr>,
) -> Result<Resp, String> {
    let status = resp.status().as_u16();
    let headers = header_vec(resp.headers());
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let trailers = collected
        .trailers()
        .map(|t| {
            t.iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Resp {
        status,
        headers,
        body: collected.to_bytes().to_vec(),
        trailers,
        local_addr,
    })
}

/// Sends `req` on a new connection and reads the whole response.
pub async fn send_async(addr: SocketAddr, req: &Req) -> Result<Resp, String> {
    let (head, local) = send_head(addr, req).await?;
    read_all(head, Some(local)).await
}

/// A keep-alive HTTP/1.1 connection for many sequential requests.
pub struct H1Conn {
    addr: SocketAddr,
    local: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<ReqBodyType>,
}

impl H1Conn {
    pub async fn connect(addr: SocketAddr) -> Result<H1Conn, String> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("h1 handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(H1Conn {
            addr,
            local,
            sender,
        })
    }

    pub async fn send(&mut self, req: &Req) -> Result<Resp, String> {
        self.sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let request = build_request(self.addr, req)?;
        let head = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| format!("h1 request: {e}"))?;
        read_all(head, Some(self.local)).await
    }
}

/// A blocking client for synchronous tests; owns a small tokio runtime.
pub struct Client {
    rt: tokio::runtime::Runtime,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-client")
            .enable_all()
            .build()
            .expect("client runtime");
        Client { rt }
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn try_send(&self, addr: SocketAddr, req: &Req) -> Result<Resp, String> {
        self.rt.block_on(async {
            tokio::time::timeout(CLIENT_TIMEOUT, send_async(addr, req))
                .await
                .map_err(|_| format!("no complete response within {CLIENT_TIMEOUT:?}"))?
        })
    }

    /// Sends `req` on a new connection; fails the test on any error.
    pub fn send(&self, addr: SocketAddr, req: &Req) -> Resp {
        self.try_send(addr, req)
            .unwrap_or_else(|e| panic!("{} {} ({:?}): {e}", req.method, req.path, req.proto))
    }

    /// Sends `req` and returns once the response head arrived; read the body
    /// with [`Streaming::next_chunk`].
    pub fn open(&self, addr: SocketAddr, req: &Req) -> Streaming<'_> {
        let (head, _local) = self
            .rt
            .block_on(async {
                tokio::time::timeout(CLIENT_TIMEOUT, send_head(addr, req))
                    .await
                    .map_err(|_| "no response head".to_string())?
            })
            .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.path));
        let status = head.status().as_u16();
        Streaming {
            client: self,
            status,
            body: head.into_body(),
            done: false,
        }
    }
}

/// A response whose body is read piece by piece.
pub struct Streaming<'a> {
    client: &'a Client,
    pub status: u16,
    body: Incoming,
    done: bool,
}

impl Streaming<'_> {
    /// The next data frame, or `None` at the end of the body.
    pub fn next_chunk(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        loop {
            let frame = self
                .client
                .rt
                .block_on(async { tokio::time::timeout(CLIENT_TIMEOUT, self.body.frame()).await })
                .unwrap_or_else(|_| panic!("no body frame within {CLIENT_TIMEOUT:?}"));
            match frame {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => panic!("response body: {e}"),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(data.to_vec());
                    }
                    // trailers: keep reading to the end
                }
            }
        }
    }

    /// Reads the rest of the body.
    pub fn read_rest(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk() {
            out.extend_from_slice(&chunk);
        }
        out
    }
}
