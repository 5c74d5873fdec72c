//! The `oob-mirror-sink` binary as `make demo` runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{exchange, post_blocking};
use hyper::StatusCode;

const WAIT: Duration = Duration::from_secs(10);

/// Forwards the lines of a child's pipe to a channel, so the test can wait
/// for them with a timeout instead of blocking forever.
fn lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn prints_one_json_line_per_record_and_exits_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_oob-mirror-sink"))
        .args(["--listen", "127.0.0.1:0", "--status", "202"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());

    let ready = stderr.recv_timeout(WAIT).unwrap();
    let addr = ready
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {ready}"))
        .parse()
        .unwrap();

    let status = post_blocking(addr, false, 2, exchange("cli")).unwrap();
    assert_eq!(status, StatusCode::ACCEPTED);

    let request: serde_json::Value =
        serde_json::from_str(&stdout.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(request["kind"], "request");
    assert_eq!(request["id"], "cli");
    assert_eq!(request["body"], "payload");
    assert_eq!(
        request["headers"],
        serde_json::json!([["x-bin", {"b64": "wyg="}]])
    );
    let response: serde_json::Value =
        serde_json::from_str(&stdout.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(response["kind"], "response");
    assert_eq!(response["status"], 200);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-sink"))
        .arg("--nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}
