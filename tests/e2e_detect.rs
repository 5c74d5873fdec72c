//! The analysis node (`oob-mirror-node --detect`'s detector) behind a real
//! Envoy with the filter: each attack class is reported with its OWASP CRS
//! rule family, benign API calls are not, and CRS run on the mirrored records
//! finds exactly what CRS run on the original traffic finds.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use oob_mirror_node::analysis::pool::{Detection, PoolConfig};
use oob_mirror_node::analysis::RulesConfig;
use oob_mirror_node::app::{App, AppConfig};
use oob_mirror_node::pairing::{Exchange, ResponsePart};
use support::client::{Client, Proto, Req, ReqBody, Resp};
use support::envoy::{envoy_ext_proc, Filter};
use support::upstream::Upstream;
use support::wait::poll_until;
use support::{Envoy, EnvoyConfig, EVENTUALLY};

struct Case {
    name: &'static str,
    req: Req,
    /// CRS rule family (rule id / 1000) that must be reported; `None`: benign.
    family: Option<u32>,
}

fn json(method: &str, path: &str, body: &str) -> Req {
    Req::new(Proto::H1, method, path)
        .header("content-type", "application/json")
        .body(body.as_bytes().to_vec())
}

fn cases() -> Vec<Case> {
    let form = |path: &str, body: &str| {
        Req::post(path, body.as_bytes().to_vec())
            .header("content-type", "application/x-www-form-urlencoded")
    };
    let case = |name, req: Req, family| Case {
        name,
        req: req
            .header("user-agent", "curl/8.5.0")
            .header("accept", "*/*")
            .header("x-request-id", name),
        family,
    };
    vec![
        // The seed's test: CRS alone misses it; oob-mirror's rule 100930 does not.
        case("seed-etc-passwd", Req::get("/etc/passwd"), Some(100)),
        case(
            "lfi-traversal",
            Req::get("/files?name=../../../../etc/passwd"),
            Some(930),
        ),
        case(
            "sqli-query",
            Req::get("/items?id=1%27%20OR%20%271%27%3D%271"),
            Some(942),
        ),
        case(
            "xss-json-body",
            json(
                "POST",
                "/comments",
                r#"{"text":"<script>alert(document.cookie)</script>"}"#,
            ),
            Some(941),
        ),
        case(
            "cmd-injection-form",
            form("/ping", "host=127.0.0.1%3Bcat%20/etc/passwd"),
            Some(932),
        ),
        case("db-error-leak", Req::get("/db-error"), Some(951)),
        case(
            "benign-get",
            Req::get("/api/users/42?fields=name,email"),
            None,
        ),
        case(
            "benign-json-post",
            json(
                "POST",
                "/api/users",
                r#"{"name":"Zoë Müller","email":"zoe@example.com"}"#,
            ),
            None,
        ),
        case(
            "benign-put",
            json(
                "PUT",
                "/api/users/42",
                r#"{"name":"Conan O'Brien","city":"Zürich"}"#,
            ),
            None,
        ),
        case(
            "benign-patch",
            json("PATCH", "/api/users/42", r#"{"nickname":"D'Artagnan"}"#),
            None,
        ),
        case(
            "benign-delete",
            Req::new(Proto::H1, "DELETE", "/api/users/42"),
            None,
        ),
        case(
            "benign-non-ascii",
            json(
                "POST",
                "/api/notes",
                r#"{"note":"Привет, 世界! It's fine."}"#,
            ),
            None,
        ),
        case(
            "benign-h2",
            json("POST", "/api/orders", r#"{"sku":"A-1","qty":2}"#).proto(Proto::H2),
            None,
        ),
    ]
}

/// The exchange as the client sent it and the client received it: what CRS
/// would see in front of Envoy. (The client adds `host`, and
/// `content-length` for a full body; Envoy adds `server` and
/// `x-envoy-upstream-service-time` to the response, which no rule reads.)
fn original(envoy: &Envoy, req: &Req, resp: &Resp) -> Exchange {
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    if req.proto == Proto::H1 {
        headers.push((b"host".to_vec(), envoy.addr().to_string().into_bytes()));
    }
    headers.extend(
        req.headers
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.clone())),
    );
    let body = match &req.body {
        ReqBody::Full(b) => b.clone(),
        ReqBody::Empty => Vec::new(),
        ReqBody::Chunks(c) => c.concat(),
    };
    if let ReqBody::Full(b) = &req.body {
        headers.push((b"content-length".to_vec(), b.len().to_string().into_bytes()));
    }
    Exchange {
        id: "original".into(),
        source: resp.local_addr.map(|a| a.to_string()),
        destination: Some(envoy.addr().to_string()),
        method: req.method.clone(),
        authority: Some(envoy.addr().to_string()),
        path: req.path.clone(),
        protocol: Some(
            if req.proto == Proto::H2 {
                "HTTP/2"
            } else {
                "HTTP/1.1"
            }
            .into(),
        ),
        request_headers: headers,
        request_body: body,
        response: Some(ResponsePart {
            status: resp.status,
            headers: resp
                .headers
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.clone()))
                .collect(),
            body: resp.body.clone(),
        }),
        ..Exchange::default()
    }
}

fn rule_ids(rules: &[oob_mirror_node::analysis::RuleMatch]) -> BTreeSet<u32> {
    rules.iter().map(|m| m.id).collect()
}

/// What the node made of the cases sent through Envoy with `filter`.
struct Run {
    envoy: Envoy,
    sent: Vec<Resp>,
    detections: Vec<Detection>,
}

fn run(filter: Filter, node_http2: bool) -> Run {
    let upstream = Upstream::start();
    let found: Arc<Mutex<Vec<Detection>>> = Arc::default();
    let collect = Arc::clone(&found);
    let node = App::start(AppConfig {
        pool: PoolConfig {
            threads: 2,
            ..PoolConfig::default()
        },
        on_detection: Some(Arc::new(move |d: &Detection| {
            collect.lock().unwrap().push(d.clone())
        })),
        ..AppConfig::new(([127, 0, 0, 1], 0).into())
    })
    .unwrap();
    let detector = Arc::clone(node.detector());
    let mut envoy_config = EnvoyConfig::new(upstream.port(), node.addr().port());
    envoy_config.filter = filter;
    if node_http2 {
        envoy_config = envoy_config.node_http2();
    }
    let envoy = Envoy::start(&envoy_config);
    let client = Client::new();
    let cases = cases();
    let sent: Vec<Resp> = cases
        .iter()
        .map(|case| client.send(envoy.addr(), &case.req))
        .collect();
    let n = cases.len() as u64;
    let done = poll_until(EVENTUALLY, || {
        (detector.snapshot().exchanges_analysed >= n).then_some(())
    });
    let snapshot = detector.snapshot();
    assert!(
        done.is_some(),
        "the node analysed {} of {n} exchanges: {snapshot:?}\n{}",
        snapshot.exchanges_analysed,
        envoy.log()
    );
    assert_eq!(snapshot.exchanges_analysed, n, "{snapshot:?}");
    assert_eq!(snapshot.decode_errors, 0, "{snapshot:?}");
    drop(node);
    let detections = std::mem::take(&mut *found.lock().unwrap());
    Run {
        envoy,
        sent,
        detections,
    }
}

/// Each attack reported with its family, no benign call reported, and for
/// every case the rule ids CRS gives on the original traffic.
fn check(run: &Run) {
    // Cases are named by their x-request-id; the record id is the filter's own.
    let reported = |name: &str| {
        run.detections
            .iter()
            .find(|d| d.request_id.as_deref() == Some(name))
    };
    let engine = RulesConfig::default().engine().unwrap();
    let mut table = String::new();
    for (case, resp) in cases().iter().zip(&run.sent) {
        let mirrored = reported(case.name)
            .map(|d| rule_ids(&d.rules))
            .unwrap_or_default();
        let direct = rule_ids(&engine.analyse(&original(&run.envoy, &case.req, resp)));
        table.push_str(&format!(
            "{:<20} {} {:?}\n",
            case.name, resp.status, mirrored
        ));
        match case.family {
            Some(family) => assert!(
                mirrored.iter().any(|id| id / 1000 == family),
                "{}: no rule of family {family} reported: {mirrored:?}",
                case.name
            ),
            None => assert!(
                mirrored.is_empty(),
                "benign {} reported: {:?}",
                case.name,
                reported(case.name)
            ),
        }
        assert_eq!(
            mirrored, direct,
            "{}: CRS on the mirror vs CRS on the original traffic",
            case.name
        );
    }
    eprintln!("{table}");
    let seed = reported("seed-etc-passwd").unwrap();
    assert_eq!(seed.method, "GET");
    assert_eq!(seed.path, "/etc/passwd");
    assert_eq!(seed.status, Some(200));
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        now_ns.abs_diff(seed.ts_ns) < 120_000_000_000,
        "ts {} vs now {now_ns}",
        seed.ts_ns
    );
    assert!(
        seed.source
            .as_deref()
            .is_some_and(|s| s.starts_with("127.0.0.1:")),
        "{seed:?}"
    );
    assert!(seed
        .rules
        .iter()
        .any(|m| m.id == 100930 && m.msg == "OS File Access Attempt in the URL path"));
    assert_eq!(reported("db-error-leak").unwrap().status, Some(500));
}

#[test]
fn batches_attacks_are_reported_benign_calls_are_not_and_match_crs_on_the_original_traffic() {
    check(&run(
        Filter::OobMirror(support::envoy::DEFAULT_PLUGIN_JSON.into()),
        false,
    ));
}

#[test]
fn ext_proc_streams_from_the_filter_give_the_same_detections() {
    let run = run(
        Filter::OobMirror(r#"{"node":{"cluster":"oob_mirror_node","protocol":"ext_proc"}}"#.into()),
        true,
    );
    check(&run);
    // The node ends every stream itself, with status 0, once the response is over.
    let n = cases().len() as i128;
    let done = poll_until(EVENTUALLY, || {
        let s = support::stats::read(&run.envoy);
        (s.get("extproc_streams_active") == 0).then_some(s)
    })
    .expect("streams still active");
    assert_eq!(done.get("extproc_streams_completed"), n);
    assert_eq!(
        done.get("extproc_streams_failed") + done.get("extproc_streams_cancelled"),
        0
    );
    done.check_extproc_invariant().unwrap();
}

/// Envoy's own ext_proc filter, as Wallarm documents it for its Native Node:
/// the node reads it as it reads oob-mirror.
#[test]
fn ext_proc_streams_from_envoys_own_client_give_the_same_detections() {
    check(&run(envoy_ext_proc(), true));
}
