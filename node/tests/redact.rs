//! The `oob-mirror-node` binary with values marked for it to redact: it detects the attack
//! in a cookie, and the value is in none of its outputs (the JSON line, stderr, the
//! `/attacks` page, the store's files); its marker, the filter's, is.

#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{get_blocking, post_blocking};
use hyper::StatusCode;
use rmpv::Value;

const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "test-key-from-a-kubernetes-secret";
const SQLI: &str = "1' UNION SELECT password FROM users--";

fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

fn headers(list: &[(&str, &str)]) -> Value {
    Value::Array(
        list.iter()
            .map(|(n, v)| Value::Array(vec![(*n).into(), (*v).into()]))
            .collect(),
    )
}

/// A request whose cookie `q` holds an SQL injection, marked `redact_at_node`, and its
/// response.
fn batch() -> Vec<u8> {
    let cookie = format!("session=redacted:0011223344556677; q={SQLI}");
    let start = cookie.len() - SQLI.len();
    let request = map(vec![
        ("v", 1.into()),
        ("kind", "request".into()),
        ("id", "marked".into()),
        ("ts_ns", 1_764_621_249_000_000_000u64.into()),
        ("method", "GET".into()),
        ("scheme", "http".into()),
        ("authority", "api.example.com".into()),
        ("path", "/account".into()),
        ("protocol", "HTTP/1.1".into()),
        ("source", "203.0.113.7:40000".into()),
        ("destination", "10.0.0.1:8080".into()),
        ("tls", false.into()),
        (
            "headers",
            headers(&[
                ("host", "api.example.com"),
                ("accept", "*/*"),
                ("user-agent", "curl/8.5.0"),
                ("cookie", &cookie),
            ]),
        ),
        ("trailers", headers(&[])),
        ("body", Value::Binary(Vec::new())),
        ("body_size", 0.into()),
        ("body_truncated", false.into()),
        ("complete", true.into()),
        (
            "redact_at_node",
            Value::Array(vec![Value::Array(vec![
                "headers".into(),
                3.into(),
                start.into(),
                cookie.len().into(),
            ])]),
        ),
    ]);
    let response = map(vec![
        ("v", 1.into()),
        ("kind", "response".into()),
        ("id", "marked".into()),
        ("ts_ns", 1_764_621_249_001_000_000u64.into()),
        ("status", 200.into()),
        ("details", "".into()),
        ("headers", headers(&[("content-type", "application/json")])),
        ("trailers", headers(&[])),
        ("body", Value::Binary(b"{}".to_vec())),
        ("body_size", 2.into()),
        ("body_truncated", false.into()),
        ("complete", true.into()),
        ("duration_us", 1000.into()),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &request).unwrap();
    rmpv::encode::write_value(&mut out, &response).unwrap();
    out
}

fn files_hold(dir: &std::path::Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let path = e.path();
            if path.is_dir() {
                return files_hold(&path, needle);
            }
            std::fs::read(&path)
                .map(|b| b.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
}

#[test]
fn a_marked_value_is_detected_and_never_leaves_the_node() {
    let data = common::tempdir("redact-cli");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--print-records",
        ])
        .args(["--retention-days", "0", "--data-dir"])
        .arg(&data)
        .env("OOB_MIRROR_REDACT_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let first = stderr.recv_timeout(WAIT).unwrap();
    let addr: std::net::SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("with the key set, the first line is the address: {first}"))
        .parse()
        .unwrap();
    assert_eq!(
        post_blocking(addr, false, 2, batch()).unwrap(),
        StatusCode::NO_CONTENT
    );
    // The two records (--print-records), then the attack.
    let records = [
        stdout.recv_timeout(WAIT).unwrap(),
        stdout.recv_timeout(WAIT).unwrap(),
    ];
    let line = stdout.recv_timeout(WAIT).unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["id"], "marked");
    for record in &records {
        let r: serde_json::Value = serde_json::from_str(record).unwrap();
        assert_eq!(r["id"], "marked", "{record}");
    }
    let rules: Vec<u64> = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(
        rules.contains(&942100),
        "the attack in the cookie is seen: {line}"
    );
    // The filter's marker for this value under this key (HMAC-SHA-256, first 8 bytes).
    let marker = oob_mirror_node::redact::Sealer::new(KEY.as_bytes()).marker(SQLI.as_bytes());
    assert_eq!(marker, "redacted:4e5199e3d6172092");
    assert!(line.contains(&marker), "{line}");
    assert!(
        records[0].contains(&marker),
        "the request record: {}",
        records[0]
    );
    // The console reads the store, which the writer fills off the analysis thread.
    let deadline = std::time::Instant::now() + WAIT;
    let page = loop {
        let (status, page) = get_blocking(addr, "/attacks/marked").unwrap();
        if status == StatusCode::OK {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "not stored: {page}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        page.contains(&marker),
        "the attack's page shows the marker: {page}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let rest: Vec<String> = stderr.iter().collect();
    for piece in ["UNION SELECT", "union select", "UNION%20SELECT"] {
        assert!(!line.contains(piece), "JSON line: {line}");
        assert!(
            !records.iter().any(|r| r.contains(piece)),
            "records: {records:?}"
        );
        assert!(!page.contains(piece), "/attacks page");
        assert!(!rest.iter().any(|l| l.contains(piece)), "stderr: {rest:?}");
        assert!(!files_hold(&data, piece.as_bytes()), "the store's files");
    }
    assert!(
        files_hold(&data, marker.as_bytes()),
        "the store holds the marker"
    );
    let _ = std::fs::remove_dir_all(&data);
}
