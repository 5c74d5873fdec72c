//! Redaction under the real Envoy: no secret sent by a client or an upstream reaches the node,
//! in any byte of any batch; names and everything else do; markers are the same on every
//! worker when the key comes from the VM environment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::client::{Proto, Req};
use support::records::{wait_exchange, HeaderValue};
use support::{stats, Rig, EVENTUALLY};

/// Logins sent, each on its own connection, so both workers take some.
const LOGINS: usize = 16;

const SECRETS: [&str; 8] = [
    "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig",
    "sess-9f8e7d6c5b4a",
    "hunter2-is-my-password",
    "ak_live_1234567890",
    "qs-token-abcdef-0123",
    "refresh-zyxwvu",
    "form-secret-pw",
    "dXNlcjpwYXNzd29yZA",
];

fn text(v: Option<&HeaderValue>) -> String {
    String::from_utf8_lossy(v.expect("header present").as_bytes()).into_owned()
}

#[test]
fn no_secret_reaches_the_node_and_markers_agree_across_workers() {
    let rig = Rig::start_with(|c| {
        c.concurrency(2)
            .vm_env("OOB_MIRROR_REDACT_KEY", "test-key-from-a-kubernetes-secret")
    });
    let login = format!(
        r#"{{"user":"ann","password":"{}","profile":{{"api_key":"{}","city":"Zürich"}}}}"#,
        SECRETS[2], SECRETS[3]
    );
    let mut ids = Vec::new();
    // The same bearer token on two requests, each on its own connection: whichever worker
    // takes them, the markers match (the key is shared).
    for i in 0..LOGINS {
        let req = Req::post(
            &format!("/upload-sha?access_token={}&page={i}", SECRETS[4]),
            login.clone(),
        )
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .header("cookie", format!("session={}", SECRETS[1]))
        .header("x-request-id", format!("login-{i}"));
        let req = if i % 2 == 1 {
            req.proto(Proto::H2)
        } else {
            req
        };
        assert_eq!(rig.send(&req).status, 200);
        ids.push(format!("login-{i}"));
    }
    let form = Req::post(
        "/upload-sha",
        format!("user=ann&passwd={}&remember=1", SECRETS[6]),
    )
    .header("content-type", "application/x-www-form-urlencoded")
    .header("proxy-authorization", format!("Basic {}", SECRETS[7]))
    .header("x-request-id", "form");
    assert_eq!(rig.send(&form).status, 200);
    ids.push("form".into());

    let mut pairs = Vec::new();
    for id in &ids {
        pairs.push(wait_exchange(&rig.envoy, &rig.node, id, EVENTUALLY));
    }
    // Every record as msgpack again: each string and bin the node received, bodies included.
    // (The upstream route answers a length and a hash: it reflects nothing of the request.)
    let mut raw = Vec::new();
    for r in rig.node.records() {
        rmpv::encode::write_value(&mut raw, &r.raw).unwrap();
    }
    assert!(raw.len() > 1000);
    for secret in SECRETS {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "secret {secret} reached the node"
        );
    }

    let (req0, _) = &pairs[0];
    let auth = text(req0.header("authorization"));
    assert!(auth.starts_with("Bearer redacted:"), "{auth}");
    // Record ids start with a per-VM prefix: the logins went through both workers, and every
    // worker wrote the same marker for the same token.
    let logins = &pairs[..LOGINS];
    let vms: std::collections::HashSet<&str> = logins
        .iter()
        .map(|(r, _)| r.id.rsplit_once('-').unwrap().0)
        .collect();
    assert_eq!(vms.len(), 2, "{vms:?}");
    for (req1, _) in logins {
        assert_eq!(
            auth,
            text(req1.header("authorization")),
            "same token, same marker"
        );
    }
    // Per cookie: the session id is credential-shaped, so a marker; the name stays.
    assert!(text(req0.header("cookie")).starts_with("session=redacted:"));
    assert_eq!(
        text(req0.header("cookie")).len(),
        "session=redacted:".len() + 16
    );
    let path = req0.path.as_deref().unwrap();
    assert!(
        path.starts_with("/upload-sha?access_token=redacted:") && path.ends_with("&page=0"),
        "{path}"
    );
    let body = req0.body_str().unwrap();
    assert!(
        body.starts_with(r#"{"user":"ann","password":"redacted:"#),
        "{body}"
    );
    assert!(
        body.contains(r#""profile":{"api_key":"redacted:"#)
            && body.ends_with(r#","city":"Zürich"}}"#),
        "{body}"
    );
    // The true size stays; the body was captured whole.
    assert_eq!(req0.body_size, login.len() as u64);
    assert!(!req0.body_truncated);
    // Non-secret headers are untouched.
    assert_eq!(text(req0.header("content-type")), "application/json");

    let (form_req, _) = &pairs[LOGINS];
    let form_body = form_req.body_str().unwrap();
    assert!(
        form_body.starts_with("user=ann&passwd=redacted:") && form_body.ends_with("&remember=1"),
        "{form_body}"
    );
    assert!(text(form_req.header("proxy-authorization")).starts_with("Basic redacted:"));

    let st = stats::wait_drained(&rig.envoy, EVENTUALLY);
    st.assert_invariant();
    rig.envoy.assert_no_critical_wasm();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// ext_proc mode: the same secrets, in headers, the `:path` and streamed JSON and form bodies,
/// never reach the ext_proc node (whose recording shows bytes as hex).
#[test]
fn no_secret_reaches_an_ext_proc_node() {
    let recorder = support::extproc::Recorder::start("end");
    let upstream = support::Upstream::start();
    let envoy = support::Envoy::start(
        &support::EnvoyConfig::new(upstream.port(), recorder.port())
            .node_http2()
            .concurrency(1)
            .vm_env("OOB_MIRROR_REDACT_KEY", "k")
            .plugin(r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"}}"#),
    );
    let client = support::client::Client::new();
    let login = format!(
        r#"{{"user":"ann","password":"{}","api_key":"{}"}}"#,
        SECRETS[2], SECRETS[3]
    );
    // A body sent in several chunks: the redaction is the same across chunk boundaries.
    let chunks: Vec<Vec<u8>> = login.as_bytes().chunks(7).map(<[u8]>::to_vec).collect();
    let reqs = [
        Req::new(
            Proto::H1,
            "POST",
            &format!("/upload-sha?access_token={}", SECRETS[4]),
        )
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", SECRETS[0]))
        .header("cookie", format!("session={}", SECRETS[1]))
        .chunks(chunks),
        Req::post("/upload-sha", format!("user=ann&passwd={}", SECRETS[6]))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("proxy-authorization", format!("Basic {}", SECRETS[7])),
    ];
    for (i, req) in reqs.iter().enumerate() {
        assert_eq!(client.send(envoy.addr(), req).status, 200);
        recorder.wait_ended(i + 1, EVENTUALLY);
    }
    let text = serde_json::to_string(&recorder.streams()).unwrap();
    for secret in SECRETS {
        assert!(!text.contains(secret), "secret {secret} reached the node");
        assert!(
            !text.contains(&hex(secret.as_bytes())),
            "secret {secret} reached the node (hex)"
        );
    }
    let streams = recorder.streams();
    let header = |msg: &serde_json::Value, name: &str| -> Option<String> {
        msg["headers"]
            .as_array()?
            .iter()
            .find(|h| h["key"] == name)
            .map(|h| String::from_utf8(unhex(h["raw_value"].as_str().unwrap())).unwrap())
    };
    let first = &streams[0][0];
    assert!(header(first, "authorization")
        .unwrap()
        .starts_with("Bearer redacted:"));
    assert!(header(first, ":path")
        .unwrap()
        .starts_with("/upload-sha?access_token=redacted:"));
    let body: Vec<u8> = streams[0]
        .iter()
        .filter(|m| m["kind"] == "request_body")
        .flat_map(|m| unhex(m["body"].as_str().unwrap_or("")))
        .collect();
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.starts_with(r#"{"user":"ann","password":"redacted:"#),
        "{body}"
    );
    assert!(
        body.contains(r#","api_key":"redacted:"#) && body.ends_with(r#""}"#),
        "{body}"
    );
    envoy.assert_no_critical_wasm();
}
