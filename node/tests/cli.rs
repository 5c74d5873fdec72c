//! The `oob-mirror-node` binary as `make demo` runs it.

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
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

/// Starts the binary with `args`; the child, its stdout lines, and the
/// address it announced on stderr.
fn spawn(args: &[&OsStr]) -> (Child, mpsc::Receiver<String>, SocketAddr) {
    let (child, stdout, _, addr) = spawn_with_env(args, &[]);
    (child, stdout, addr)
}

/// [`spawn`] with environment variables; its stderr lines after the first too.
fn spawn_with_env(
    args: &[&OsStr],
    env: &[(&str, &str)],
) -> (
    Child,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
    SocketAddr,
) {
    // A test that does not look at the store keeps none (else it would be made in the
    // current directory).
    let keeps = args.iter().any(|a| *a == "--store" || *a == "--data-dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
        .args(args)
        .args(if keeps {
            &[][..]
        } else {
            &["--store", "none"][..]
        })
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    let mut ready = stderr.recv_timeout(WAIT).unwrap();
    // Without OOB_MIRROR_REDACT_KEY the node says first, in one line, that its key is random.
    if ready.starts_with("oob-mirror-node: OOB_MIRROR_REDACT_KEY is not set: ") {
        ready = stderr.recv_timeout(WAIT).unwrap();
    }
    let addr = ready
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {ready}"))
        .parse()
        .unwrap();
    (child, stdout, stderr, addr)
}

#[test]
fn prints_one_json_line_per_record_and_exits_on_sigterm() {
    let args = ["--listen", "127.0.0.1:0", "--print-records"].map(OsStr::new);
    let (mut child, stdout, addr) = spawn(&args);

    let status = post_blocking(addr, false, 2, exchange("cli")).unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);

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
    let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
        .arg("--nope")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn detect_prints_one_json_line_per_attack_and_serves_the_attacks_page() {
    let rules =
        std::env::temp_dir().join(format!("oob-mirror-cli-rules-{}.conf", std::process::id()));
    // An extra rule file, loaded after CRS: flags a header CRS ignores.
    std::fs::write(
        &rules,
        "SecRule REQUEST_HEADERS:x-canary \"@streq tripped\" \"id:199001,phase:1,pass,log,msg:'Canary header',severity:'NOTICE'\"\n",
    )
    .unwrap();
    let data = std::env::temp_dir().join(format!("oob-mirror-cli-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let mut args = [
        "--detect",
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        // The batch is dated 2025-12-01: keep it whatever its age.
        "--retention-days",
        "0",
        "--data-dir",
    ]
    .map(OsStr::new)
    .to_vec();
    args.extend([data.as_os_str(), OsStr::new("--rules"), rules.as_os_str()]);
    let (mut child, stdout, addr) = spawn(&args);

    let mut batch = Vec::new();
    let headers = [
        ("host", "shop.example"),
        ("accept", "*/*"),
        ("x-canary", "tripped"),
    ];
    common::push_http_request(
        &mut batch,
        "benign",
        "GET",
        "/products?page=2",
        &headers[..2],
        b"",
    );
    common::push_http_response(&mut batch, "benign", 200, &[], b"[]");
    common::push_http_request(
        &mut batch,
        "attack",
        "GET",
        "/products?id=1%20UNION%20SELECT%20password%20FROM%20users",
        &headers,
        b"",
    );
    common::push_http_response(&mut batch, "attack", 200, &[], b"[]");
    assert_eq!(
        post_blocking(addr, true, 4, batch).unwrap(),
        StatusCode::NO_CONTENT
    );

    // Only the attack is printed; the records are not.
    let line: serde_json::Value =
        serde_json::from_str(&stdout.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(line["id"], "attack");
    assert_eq!(line["ts"], "2025-12-01T20:34:09.000Z");
    assert_eq!(line["source"], "203.0.113.7:40000");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["authority"], "api.example.com");
    assert_eq!(
        line["path"],
        "/products?id=1%20UNION%20SELECT%20password%20FROM%20users"
    );
    assert_eq!(line["status"], 200);
    let rules_seen: Vec<u64> = line["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert!(rules_seen.contains(&199001), "{line}");
    assert!(rules_seen.iter().any(|id| id / 1000 == 942), "{line}");
    let sqli = line["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_u64().unwrap() / 1000 == 942)
        .unwrap();
    assert!(!sqli["msg"].as_str().unwrap().is_empty());
    assert_eq!(sqli["severity"], "CRITICAL");
    assert!(sqli["data"].as_str().unwrap().contains("ARGS:id"), "{sqli}");
    assert!(
        stdout.recv_timeout(Duration::from_millis(300)).is_err(),
        "benign exchange printed"
    );

    // The console reads the store, which the writer fills off the analysis thread.
    let deadline = std::time::Instant::now() + WAIT;
    let page = loop {
        let (status, page) = common::get_blocking(addr, "/attacks").unwrap();
        assert_eq!(status, StatusCode::OK);
        if page.contains("data-id=\"attack\"") {
            break page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not in the store: {page}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        page.contains("UNION%20SELECT") && page.contains("199001"),
        "{page}"
    );
    assert!(data.join("attacks.sqlite").is_file());
    let (_, metrics) = common::get_blocking(addr, "/metrics").unwrap();
    assert!(
        metrics.contains("oob_mirror_node_exchanges_analysed_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("oob_mirror_node_records_received_total 4\n"),
        "{metrics}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    let _ = std::fs::remove_file(&rules);
    let _ = std::fs::remove_dir_all(&data);
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn detect_refuses_a_bad_rule_file_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
        .args([
            "--detect",
            "--listen",
            "127.0.0.1:0",
            "--rules",
            "/nonexistent/rules.conf",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/rules.conf"), "{err}");
    assert!(!err.contains("listening on"), "{err}");
}

const NODE_NAME: &str = "node.oob-mirror.test";
const SECRET: &str = "s3cret-from-a-kubernetes-secret";
const SECOND: &str = "an0ther-s3cret";

/// A scratch directory with a certificate and key for [`NODE_NAME`], removed on drop.
struct Certs {
    dir: std::path::PathBuf,
    ca: common::pki::Ca,
}

impl Certs {
    fn new(tag: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("oob-mirror-cli-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = common::pki::Ca::new("oob-mirror test CA");
        let leaf = ca.issue(&[NODE_NAME]);
        std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
        Certs { dir, ca }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// With TLS and required headers: TLS only, batches without the headers refused, the
/// rest printed, a plaintext attempt said on stderr (once), and neither secret shown
/// anywhere.
#[test]
fn tls_and_required_headers_from_flags_and_the_environment() {
    let certs = Certs::new("tls");
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let second = format!("x-second:{SECOND}");
    let mut args = ["--listen", "127.0.0.1:0", "--print-records", "--tls-cert"]
        .map(OsStr::new)
        .to_vec();
    args.extend([cert.as_os_str(), OsStr::new("--tls-key"), key.as_os_str()]);
    args.extend(
        [
            "--require-header-env",
            "X-OOB-Mirror-Token:SINK_TOKEN",
            "--require-header",
            &second,
        ]
        .map(OsStr::new),
    );
    let (mut child, stdout, stderr, addr) = spawn_with_env(&args, &[("SINK_TOKEN", SECRET)]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let connector = common::tls_connector(&certs.ca.pem(), &[b"h2", b"http/1.1"]);
    let post = |extra: &[(&str, &str)]| {
        rt.block_on(async {
            let (io, alpn) = common::tls_connect(addr, &connector, NODE_NAME).await?;
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
            common::send_on(io, true, hyper::Method::POST, 2, exchange("tls"), extra).await
        })
        .unwrap()
    };
    assert_eq!(
        post(&[("x-oob-mirror-token", SECRET)]),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&[("x-oob-mirror-token", SECRET), ("x-second", SECOND)]),
        StatusCode::NO_CONTENT
    );
    let request: serde_json::Value =
        serde_json::from_str(&stdout.recv_timeout(WAIT).unwrap()).unwrap();
    assert_eq!(
        (&request["kind"], &request["id"]),
        (&"request".into(), &"tls".into())
    );

    assert!(post_blocking(addr, false, 2, exchange("plain")).is_err());
    let said = stderr.recv_timeout(WAIT).unwrap();
    assert!(
        said.starts_with("oob-mirror-node: TLS handshake from 127.0.0.1:")
            && said.contains("failed"),
        "{said}"
    );
    // Within the minute, further failures are only counted.
    assert!(post_blocking(addr, true, 2, exchange("plain")).is_err());

    let (status, metrics) = rt
        .block_on(async {
            let (io, _) = common::tls_connect(addr, &connector, NODE_NAME).await?;
            common::get_on(io, "/metrics").await
        })
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    for line in [
        "oob_mirror_node_tls_handshakes_failed_total 2\n",
        "oob_mirror_node_requests_unauthenticated_total 1\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let rest: Vec<String> = stderr.try_iter().collect();
    assert!(rest.is_empty(), "more on stderr: {rest:?}");
    let out: Vec<String> = stdout.try_iter().collect();
    for text in out.iter().chain([&said, &metrics]) {
        assert!(!text.contains(SECRET) && !text.contains(SECOND), "{text}");
    }
}

/// A certificate or key the node cannot use stops it before it listens, with one line
/// naming the file; a secret given on the same command line is never echoed.
#[test]
fn bad_tls_files_stop_the_node_with_one_line() {
    let certs = Certs::new("bad");
    std::fs::write(certs.path("garbage.pem"), "not PEM\n").unwrap();
    let other = certs.ca.issue(&[NODE_NAME]);
    std::fs::write(certs.path("other-key.pem"), &other.key_pem).unwrap();
    let secret = format!("x-oob-mirror-token:{SECRET}");
    for (cert, key, at_fault, says) in [
        ("cert.pem", "missing.pem", "missing.pem", "cannot read it"),
        (
            "garbage.pem",
            "key.pem",
            "garbage.pem",
            "no PEM CERTIFICATE",
        ),
        (
            "cert.pem",
            "garbage.pem",
            "garbage.pem",
            "no PEM private key",
        ),
        (
            "cert.pem",
            "other-key.pem",
            "other-key.pem",
            "does not match",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
            .args(["--listen", "127.0.0.1:0", "--require-header", &secret])
            .arg("--tls-cert")
            .arg(certs.path(cert))
            .arg("--tls-key")
            .arg(certs.path(key))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cert} {key}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        let path = certs.path(at_fault).display().to_string();
        assert!(
            err.starts_with(&format!("oob-mirror-node: {path}: ")) && err.contains(says),
            "{err}"
        );
        assert!(!err.contains(SECRET) && !err.contains("PRIVATE"), "{err}");
    }
    // Flag errors print the usage, which never holds a value either.
    for args in [
        vec!["--tls-cert", "c.pem", "--require-header", &secret],
        vec!["--require-header", &secret, "--help"],
        vec!["--require-header", SECRET],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
            .args(&args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("--require-header NAME:VALUE"), "{text}");
        assert!(!text.contains(SECRET), "{args:?}: {text}");
    }
}

/// The API's attack ids, once `n` are there (the writer fills the store off the analysis).
fn wait_for_attacks(addr: SocketAddr, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, body) = common::get_blocking(addr, "/api/v1/attacks").unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut ids: Vec<String> = v
            .get("items")
            .and_then(serde_json::Value::as_array)
            .unwrap()
            .iter()
            .map(|a| a.get("id").and_then(|id| id.as_str()).unwrap().to_owned())
            .collect();
        if ids.len() >= n {
            ids.sort();
            return ids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} attacks not stored: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_postgres_store_with_the_password_from_the_environment_keeps_attacks_across_restarts() {
    let pg = pg::PgCluster::start();
    let url = pg.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--threads",
        "1",
        "--retention-days",
        "0",
        "--store",
        &url,
    ]
    .map(OsStr::new);
    let env = [("OOB_MIRROR_NODE_STORE_PASSWORD", pg::PASSWORD)];
    let (child, _stdout, stderr, addr) = spawn_with_env(&args, &env);
    assert_eq!(
        post_blocking(addr, false, 12, common::attack_batch()).unwrap(),
        StatusCode::NO_CONTENT
    );
    let before = wait_for_attacks(addr, 5);
    assert_eq!(before, ["cmd", "leak", "seed", "sqli", "xss"]);
    stop(child);
    let said: Vec<String> = stderr.try_iter().collect();
    assert!(
        said.iter().all(|l| !l.contains(pg::PASSWORD)),
        "the password in the log: {said:?}"
    );

    // A new process on the same store lists the same attacks: none is analysed twice.
    let (child, _stdout, _stderr, addr) = spawn_with_env(&args, &env);
    assert_eq!(wait_for_attacks(addr, 5), before);
    stop(child);

    // A wrong password stops the node at start with one line, which does not hold it.
    let out = Command::new(env!("CARGO_BIN_EXE_oob-mirror-node"))
        .args(args)
        .env("OOB_MIRROR_NODE_STORE_PASSWORD", "wrong-Pa55")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !err.contains("wrong-Pa55") && !err.contains(pg::PASSWORD),
        "{err}"
    );
    assert!(err.contains("password authentication failed"), "{err}");
}
