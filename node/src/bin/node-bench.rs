//! `node-bench`: load for `oob-mirror-node --detect`, for `make bench`'s node
//! part. Posts the same batch (32 exchanges of one traffic mix, encoded as the
//! filter encodes them) over keep-alive HTTP/1.1 connections for a while, and
//! prints one JSON line: batches and exchanges the node took, and 503s.
//!
//! usage: node-bench --node ADDR --mix get|json-1k|attacks|download-64k
//!                   [--seconds S] [--connections C]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const EXCHANGES_PER_BATCH: usize = 32;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("node-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    node: SocketAddr,
    mix: String,
    seconds: u64,
    connections: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        node: SocketAddr::from(([127, 0, 0, 1], 9090)),
        mix: "get".into(),
        seconds: 5,
        connections: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("{flag}: bad value {value}");
        match flag.as_str() {
            "--node" => args.node = value.parse().map_err(|_| bad())?,
            "--mix" => args.mix = value.clone(),
            "--seconds" => args.seconds = value.parse().map_err(|_| bad())?,
            "--connections" => args.connections = value.parse().map_err(|_| bad())?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    Ok(args)
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let batch = Arc::new(batch(&args.mix)?);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let taken = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for _ in 0..args.connections.max(1) {
        let (batch, taken, refused, node) = (
            Arc::clone(&batch),
            Arc::clone(&taken),
            Arc::clone(&refused),
            args.node,
        );
        threads.push(std::thread::spawn(move || -> Result<(), String> {
            let mut conn = Conn::open(node).map_err(|e| format!("connect {node}: {e}"))?;
            while Instant::now() < deadline {
                match conn.post(&batch).map_err(|e| format!("post: {e}"))? {
                    204 | 200 => {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                    503 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                        // The filter backs off too; this only avoids spinning.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    other => return Err(format!("node answered {other}")),
                }
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| "a sender thread panicked".to_owned())??;
    }
    let batches = taken.load(Ordering::Relaxed);
    println!(
        "{{\"mix\":\"{}\",\"batches\":{batches},\"exchanges\":{},\"refused_503\":{}}}",
        args.mix,
        batches * EXCHANGES_PER_BATCH as u64,
        refused.load(Ordering::Relaxed)
    );
    Ok(())
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            writer: stream.try_clone()?,
            reader: BufReader::new(stream),
        })
    }

    /// One POST; the status. The answer's body is read and dropped.
    fn post(&mut self, body: &[u8]) -> io::Result<u16> {
        let head = format!(
            "POST /v1/records HTTP/1.1\r\nhost: node\r\ncontent-type: application/msgpack\r\n\
             x-oob-mirror-version: 1\r\nx-oob-mirror-records: {}\r\ncontent-length: {}\r\n\r\n",
            EXCHANGES_PER_BATCH * 2,
            body.len()
        );
        self.writer.write_all(head.as_bytes())?;
        self.writer.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((name, value)) = l.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut sink = vec![0u8; length];
        self.reader.read_exact(&mut sink)?;
        Ok(status)
    }
}

type Pairs<'a> = &'a [(&'a str, &'a str)];

/// method, path, request headers, request body, status, response body.
type Sample = (String, String, Vec<(String, String)>, Vec<u8>, u16, Vec<u8>);

/// One exchange of the mix, `i`-th of the batch.
fn exchange(mix: &str, i: usize) -> Result<Sample, String> {
    let base: Pairs = &[
        ("host", "api.example.com"),
        ("user-agent", "bench/1"),
        ("accept", "*/*"),
    ];
    let mut headers: Vec<(String, String)> = base
        .iter()
        .map(|(n, v)| ((*n).into(), (*v).into()))
        .collect();
    let json_body = |n: usize| -> Vec<u8> {
        let mut s = String::from("{\"items\":[");
        let mut k = 0;
        while s.len() < n.saturating_sub(20) {
            if k > 0 {
                s.push(',');
            }
            s.push_str(&format!("{{\"id\":{k},\"name\":\"item {k}\",\"ok\":true}}"));
            k += 1;
        }
        s.push_str("]}");
        s.into_bytes()
    };
    Ok(match mix {
        "get" => (
            "GET".into(),
            format!("/api/users/{i}?fields=name,email"),
            headers,
            Vec::new(),
            200,
            json_body(200),
        ),
        "json-1k" => {
            let body = json_body(1024);
            headers.push(("content-type".into(), "application/json".into()));
            headers.push(("content-length".into(), body.len().to_string()));
            (
                "POST".into(),
                "/api/orders".into(),
                headers,
                body,
                200,
                json_body(1024),
            )
        }
        "download-64k" => (
            "GET".into(),
            format!("/api/export/{i}"),
            headers,
            Vec::new(),
            200,
            json_body(64 * 1024),
        ),
        "attacks" => {
            let (method, path, body): (&str, &str, &[u8]) = match i % 4 {
                0 => ("GET", "/etc/passwd", b""),
                1 => ("GET", "/items?id=1%27%20OR%20%271%27%3D%271", b""),
                2 => (
                    "POST",
                    "/comments",
                    b"{\"text\":\"<script>alert(document.cookie)</script>\"}",
                ),
                _ => ("POST", "/ping", b"host=127.0.0.1%3Bcat%20/etc/passwd"),
            };
            if !body.is_empty() {
                let ct = if i % 4 == 2 {
                    "application/json"
                } else {
                    "application/x-www-form-urlencoded"
                };
                headers.push(("content-type".into(), ct.into()));
                headers.push(("content-length".into(), body.len().to_string()));
            }
            (
                method.into(),
                path.into(),
                headers,
                body.to_vec(),
                200,
                json_body(200),
            )
        }
        other => {
            return Err(format!(
                "unknown mix {other} (get, json-1k, attacks, download-64k)"
            ))
        }
    })
}

/// The batch: request and response record of each exchange, as
/// docs/wire-format.md describes them.
fn batch(mix: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for i in 0..EXCHANGES_PER_BATCH {
        let (method, path, headers, body, status, resp_body) = exchange(mix, i)?;
        let id = format!("bench-{i}");
        let w = &mut out;
        rmp::encode::write_map_len(w, 18).map_err(err)?;
        str_kv(w, "v", None, Some(1))?;
        str_kv(w, "kind", Some("request"), None)?;
        str_kv(w, "id", Some(&id), None)?;
        str_kv(w, "ts_ns", None, Some(1_764_621_249_000_000_000))?;
        str_kv(w, "method", Some(&method), None)?;
        str_kv(w, "scheme", Some("http"), None)?;
        str_kv(w, "authority", Some("api.example.com"), None)?;
        str_kv(w, "path", Some(&path), None)?;
        str_kv(w, "protocol", Some("HTTP/1.1"), None)?;
        str_kv(w, "source", Some("203.0.113.7:40000"), None)?;
        str_kv(w, "destination", Some("10.0.0.1:8080"), None)?;
        bool_kv(w, "tls", false)?;
        headers_kv(w, "headers", &headers)?;
        headers_kv(w, "trailers", &[])?;
        bin_kv(w, "body", &body)?;
        str_kv(w, "body_size", None, Some(body.len() as u64))?;
        bool_kv(w, "body_truncated", false)?;
        bool_kv(w, "complete", true)?;
        rmp::encode::write_map_len(w, 13).map_err(err)?;
        str_kv(w, "v", None, Some(1))?;
        str_kv(w, "kind", Some("response"), None)?;
        str_kv(w, "id", Some(&id), None)?;
        str_kv(w, "ts_ns", None, Some(1_764_621_249_001_000_000))?;
        str_kv(w, "status", None, Some(u64::from(status)))?;
        str_kv(w, "details", Some("via_upstream"), None)?;
        let resp_headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("content-length".to_owned(), resp_body.len().to_string()),
        ];
        headers_kv(w, "headers", &resp_headers)?;
        headers_kv(w, "trailers", &[])?;
        bin_kv(w, "body", &resp_body)?;
        str_kv(w, "body_size", None, Some(resp_body.len() as u64))?;
        bool_kv(w, "body_truncated", false)?;
        bool_kv(w, "complete", true)?;
        str_kv(w, "duration_us", None, Some(1000))?;
    }
    Ok(out)
}

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

fn str_kv(w: &mut Vec<u8>, key: &str, s: Option<&str>, n: Option<u64>) -> Result<(), String> {
    rmp::encode::write_str(w, key).map_err(err)?;
    match (s, n) {
        (Some(s), _) => rmp::encode::write_str(w, s).map_err(err),
        (None, Some(n)) => rmp::encode::write_uint(w, n).map(|_| ()).map_err(err),
        (None, None) => rmp::encode::write_nil(w).map_err(err),
    }
}

fn bool_kv(w: &mut Vec<u8>, key: &str, v: bool) -> Result<(), String> {
    rmp::encode::write_str(w, key).map_err(err)?;
    rmp::encode::write_bool(w, v).map_err(err)
}

fn bin_kv(w: &mut Vec<u8>, key: &str, v: &[u8]) -> Result<(), String> {
    rmp::encode::write_str(w, key).map_err(err)?;
    rmp::encode::write_bin(w, v).map_err(err)
}

fn headers_kv(w: &mut Vec<u8>, key: &str, headers: &[(String, String)]) -> Result<(), String> {
    rmp::encode::write_str(w, key).map_err(err)?;
    rmp::encode::write_array_len(w, headers.len() as u32).map_err(err)?;
    for (n, v) in headers {
        rmp::encode::write_array_len(w, 2).map_err(err)?;
        rmp::encode::write_str(w, n).map_err(err)?;
        rmp::encode::write_str(w, v).map_err(err)?;
    }
    Ok(())
}
