//! A minimal blocking HTTP/1.1 client over a plain `TcpStream`: the caller
//! writes the request bytes by hand (e.g. header values that are not UTF-8),
//! and it is also what the harness uses to talk to Envoy's admin interface.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Header names lower-cased, values as raw bytes, in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` (complete HTTP/1.1 bytes) to `addr` and reads one response.
/// The request should carry `connection: close` unless the caller knows the
/// body framing of the answer.
pub fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> io::Result<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(request)?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    read_response(&mut reader, request.starts_with(b"HEAD "))
}

/// `GET path` with `connection: close`.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<RawResponse> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    exchange(addr, req.as_bytes(), timeout)
}

/// `POST path` with an empty body and `connection: close`.
pub fn post(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<RawResponse> {
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    exchange(addr, req.as_bytes(), timeout)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(line)
}

fn read_response(reader: &mut impl BufRead, head: bool) -> io::Result<RawResponse> {
    let status_line = read_line(reader)?;
    let status_line = String::from_utf8_lossy(&status_line).into_owned();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| invalid("header line without ':'"))?;
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        let value = trim_ows(value);
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    let mut resp = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp.header("transfer-encoding").is_some_and(|v| {
        String::from_utf8_lossy(v)
            .to_ascii_lowercase()
            .contains("chunked")
    });
    if chunked {
        loop {
            let size_line = read_line(reader)?;
            let size_str = String::from_utf8_lossy(&size_line);
            let size_hex = size_str.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| invalid(format!("bad chunk size {size_str:?}")))?;
            if size == 0 {
                // Trailers (ignored) until the empty line.
                while !read_line(reader)?.is_empty() {}
                break;
            }
            let mut chunk = vec![0u8; size];
            reader.read_exact(&mut chunk)?;
            resp.body.extend_from_slice(&chunk);
            read_line(reader)?;
        }
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = String::from_utf8_lossy(len)
            .trim()
            .parse()
            .map_err(|_| invalid("bad content-length"))?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        resp.body = body;
    } else {
        reader.read_to_end(&mut resp.body)?;
    }
    Ok(resp)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}
