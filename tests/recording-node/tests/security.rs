//! The node's TLS listener and required headers, driven by real TLS and
//! HTTP clients, with a CA made in the test.

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used)]

#[path = "../../../node/tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki::Ca;
use common::{exchange, post_blocking, send_on, tls_connect, tls_connector};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use oob_mirror_node::{RequiredHeaders, TlsConfig};
use recording_node::{Node, NodeConfig};

const WAIT: Duration = Duration::from_secs(10);
const NODE_NAME: &str = "node.oob-mirror.test";
const TOKEN: &str = "x-oob-mirror-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A node serving TLS with a certificate for [`NODE_NAME`] from `ca`.
fn tls_node(ca: &Ca) -> Node {
    let leaf = ca.issue(&[NODE_NAME]);
    let tls = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).unwrap();
    Node::start_with(NodeConfig {
        tls: Some(tls),
        ..NodeConfig::default()
    })
    .unwrap()
}

/// Waits until `f` holds; false after [`WAIT`].
fn eventually(f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// `GET path` over TLS with HTTP/1.1: status and body.
async fn get_tls(
    node: &Node,
    ca: &Ca,
    path: &str,
) -> Result<(StatusCode, String), common::BoxError> {
    let (io, _) = tls_connect(node.addr(), &tls_connector(&ca.pem(), &[]), NODE_NAME).await?;
    common::get_on(io, path).await
}

#[test]
fn tls_node_takes_batches_over_h2_and_http1_by_alpn_and_nothing_in_plaintext() {
    let ca = Ca::new("oob-mirror test CA");
    let node = tls_node(&ca);
    assert!(node.url().starts_with("https://"), "{}", node.url());
    let rt = runtime();

    // Envoy's gRPC client offers h2 only; its HTTP/1.1 client offers http/1.1 or nothing.
    for (alpn, h2, id) in [
        (&[&b"h2"[..]][..], true, "over-h2"),
        (&[&b"http/1.1"[..]][..], false, "over-http1"),
        (&[][..], false, "no-alpn"),
    ] {
        let status = rt
            .block_on(async {
                let (io, agreed) =
                    tls_connect(node.addr(), &tls_connector(&ca.pem(), alpn), NODE_NAME).await?;
                assert_eq!(agreed.as_deref(), alpn.first().copied(), "{id}");
                send_on(io, h2, Method::POST, 2, exchange(id), &[]).await
            })
            .unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT, "{id}");
    }
    let records = node.wait_for_records(6, WAIT).unwrap();
    assert_eq!(records.len(), 6);
    let versions: Vec<String> = node.batches().into_iter().map(|b| b.http_version).collect();
    assert_eq!(versions, ["HTTP/2.0", "HTTP/1.1", "HTTP/1.1"]);
    assert_eq!(node.tls_handshakes(), 3);

    // Plain HTTP, both kinds: no answer, nothing recorded, each counted.
    for h2 in [false, true] {
        let plain = post_blocking(node.addr(), h2, 2, exchange("plain"));
        assert!(plain.is_err(), "plaintext was answered: {plain:?}");
    }
    assert!(
        eventually(|| node.tls_handshakes_failed() == 2),
        "failed handshakes: {}",
        node.tls_handshakes_failed()
    );
    assert_eq!(node.record_count(), 6);

    let (status, metrics) = rt.block_on(get_tls(&node, &ca, "/metrics")).unwrap();
    assert_eq!(status, StatusCode::OK);
    for line in [
        "oob_mirror_node_tls_handshakes_total 4\n",
        "oob_mirror_node_tls_handshakes_failed_total 2\n",
        "oob_mirror_node_requests_unauthenticated_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in:\n{metrics}");
    }
}

#[test]
fn a_client_that_cannot_verify_the_node_sends_nothing_and_the_node_counts_it() {
    let ca = Ca::new("oob-mirror test CA");
    let other = Ca::new("another CA");
    let node = tls_node(&ca);
    let rt = runtime();
    // Another CA; then the right CA but another name than the certificate's.
    for (trusted, name, why) in [
        (&other, NODE_NAME, "UnknownIssuer"),
        (&ca, "other.oob-mirror.test", "not valid for name"),
    ] {
        let err = rt
            .block_on(async {
                let (io, _) =
                    tls_connect(node.addr(), &tls_connector(&trusted.pem(), &[]), name).await?;
                send_on(io, false, Method::POST, 2, exchange("x"), &[]).await
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{err}");
    }
    // The client's alert fails the node's side of each handshake.
    assert!(
        eventually(|| node.tls_handshakes_failed() == 2),
        "failed handshakes: {}",
        node.tls_handshakes_failed()
    );
    assert_eq!((node.tls_handshakes(), node.batch_count()), (0, 0));
}

/// The node's TLS configuration refuses what it cannot serve, saying which
/// file is at fault and never quoting the key.
#[test]
fn bad_certificates_and_keys_are_refused_by_file() {
    let ca = Ca::new("oob-mirror test CA");
    let leaf = ca.issue(&[NODE_NAME]);
    let another = ca.issue(&[NODE_NAME]);
    let dir = std::env::temp_dir().join(format!("oob-mirror-node-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cert = file("cert.pem", &leaf.cert_pem);
    let key = file("key.pem", &leaf.key_pem);
    let other_key = file("other-key.pem", &another.key_pem);
    let not_pem = file("garbage.pem", "not a PEM file\n");
    let missing = dir.join("missing.pem");

    assert!(TlsConfig::from_files(&cert, &key).is_ok());
    for (c, k, at_fault, says) in [
        (&missing, &key, &missing, "cannot read it"),
        (&cert, &missing, &missing, "cannot read it"),
        (&not_pem, &key, &not_pem, "no PEM CERTIFICATE"),
        (&cert, &not_pem, &not_pem, "no PEM private key"),
        (&cert, &cert, &cert, "no PEM private key"),
        (
            &cert,
            &other_key,
            &other_key,
            "does not match the certificate",
        ),
    ] {
        let e = TlsConfig::from_files(c, k).unwrap_err();
        assert!(
            e.starts_with(&at_fault.display().to_string()) && e.contains(says),
            "{e}"
        );
        assert!(!e.contains('\n') && !e.contains("PRIVATE KEY"), "{e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Batches and ext_proc streams without the header are refused before a byte
/// of their body is read; pages stay open.
#[test]
fn required_header_refuses_batches_and_ext_proc_streams_unread() {
    let mut require = RequiredHeaders::default();
    // Two values for one name: the old and the new secret during a rotation.
    require.add(TOKEN, "t0ken-old").unwrap();
    require.add(TOKEN, "t0ken-new").unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&streams);
    let node = Node::start_with(NodeConfig {
        require_headers: require,
        on_extproc: Some(Arc::new(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        })),
        ..NodeConfig::default()
    })
    .unwrap();
    let addr = node.addr();
    let rt = runtime();
    let batch = |h2: bool, extra: &'static [(&'static str, &'static str)]| {
        rt.block_on(async {
            let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
            send_on(io, h2, Method::POST, 2, exchange("b"), extra).await
        })
        .unwrap()
    };

    assert_eq!(batch(false, &[]), StatusCode::UNAUTHORIZED);
    assert_eq!(
        batch(true, &[(TOKEN, "t0ken-ol")]),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        batch(false, &[("x-other", "t0ken-old")]),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        batch(false, &[("X-OOB-Mirror-Token", "t0ken-old")]),
        StatusCode::NO_CONTENT
    );
    assert_eq!(batch(true, &[(TOKEN, "t0ken-new")]), StatusCode::NO_CONTENT);
    assert_eq!(node.wait_for_records(4, WAIT).unwrap().len(), 4);
    assert_eq!(node.batch_count(), 2);

    // A body that never ends: refused at once without the header (nothing
    // waits for the body), held with it (the node reads the whole batch).
    let (open_status, open_body) = rt.block_on(async {
        let io = TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut answers = Vec::new();
        for extra in [None, Some((TOKEN, "t0ken-new"))] {
            let (tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(1);
            let mut req = hyper::Request::post("http://oob-mirror/v1/records");
            if let Some((n, v)) = extra {
                req = req.header(n, v);
            }
            let pending = sender.send_request(req.body(body).unwrap());
            answers.push(
                tokio::time::timeout(Duration::from_millis(500), pending)
                    .await
                    .ok()
                    .map(|r| r.unwrap().status()),
            );
            drop(tx);
        }
        (answers[0], answers[1])
    });
    assert_eq!(open_status, Some(StatusCode::UNAUTHORIZED));
    assert_eq!(open_body, None, "an endless authorised batch was answered");

    // ext_proc: UNAUTHENTICATED in a trailers-only answer, the stream unread.
    let stream = |extra: Option<(&'static str, &'static str)>| {
        let extra: Vec<_> = extra.into_iter().collect();
        rt.block_on(common::open_process_stream(addr, &extra))
            .unwrap()
            .1
    };
    assert_eq!(stream(None).as_deref(), Some("16"));
    assert_eq!(stream(Some((TOKEN, "wrong"))).as_deref(), Some("16"));
    assert_eq!(streams.load(Ordering::SeqCst), 0);
    // With the header the stream is read (and ends with its status in the trailers).
    assert_eq!(stream(Some((TOKEN, "t0ken-old"))), None);
    assert!(eventually(|| streams.load(Ordering::SeqCst) == 1));

    // 3 batches, the endless one and 2 streams.
    assert_eq!(node.requests_unauthenticated(), 6);
    let (status, metrics) = common::get_blocking(addr, "/metrics").unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("oob_mirror_node_requests_unauthenticated_total 6\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("t0ken"), "{metrics}");
}
