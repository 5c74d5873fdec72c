//! The JSON API under `/api/v1/`, on a node with a SQLite store: exact answers for the five
//! attacks of `common::attack_batch`, then schemathesis (PyPI; `make test` installs it) against
//! the node's own OpenAPI document: no 5xx, and every answer as the document says.

// Helpers outside `#[test]` functions: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn get(node: &oob_mirror_node::app::App, path: &str) -> (u16, Value) {
    let (status, body) = common::get_blocking(node.addr(), path).unwrap();
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status.as_u16(), value)
}

fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_api_lists_filters_counts_and_exports_the_attacks() {
    let (dir, store) = common::temp_store("api");
    let node = common::start_node(&store);
    common::seed_attacks(&node);

    let (status, all) = get(&node, "/api/v1/attacks");
    assert_eq!(status, 200);
    assert_eq!(ids(&all), ["cmd", "leak", "seed", "sqli", "xss"]);
    assert_eq!(
        (&all["total"], &all["limit"], &all["offset"]),
        (&5.into(), &50.into(), &0.into())
    );
    let seed = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "seed")
        .unwrap();
    // The fields of the node's JSON line, and the class.
    assert_eq!(seed["method"], "GET");
    assert_eq!(seed["path"], "/etc/passwd");
    assert_eq!(seed["authority"], "api.example.com");
    assert_eq!(seed["status"], 200);
    assert_eq!(seed["source"], "203.0.113.7:40000");
    assert_eq!(seed["ts"], "2025-12-01T20:34:09.000Z");
    assert_eq!(seed["class"], "lfi");
    assert_eq!(seed["rules"][0]["id"], 100930);

    for (query, want) in [
        ("class=sqli", vec!["sqli"]),
        ("class=lfi", vec!["cmd", "seed"]),
        ("rule=941100", vec!["xss"]),
        ("status=500", vec!["leak"]),
        ("path=/api/", vec!["cmd", "leak", "sqli", "xss"]),
        (
            "host=API.example.com:443",
            vec!["cmd", "leak", "seed", "sqli", "xss"],
        ),
        ("host=other.example.com", vec![]),
        (
            "source=203.0.113.7",
            vec!["cmd", "leak", "seed", "sqli", "xss"],
        ),
        ("since=2025-12-02T00:00:00Z", vec![]),
        (
            "until=2025-12-02T00:00:00Z",
            vec!["cmd", "leak", "seed", "sqli", "xss"],
        ),
    ] {
        let (status, v) = get(&node, &format!("/api/v1/attacks?{query}"));
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(ids(&v), want, "{query}");
        assert_eq!(v["total"], want.len(), "{query}");
    }
    let (_, page) = get(&node, "/api/v1/attacks?limit=2&offset=4");
    assert_eq!(
        (page["items"].as_array().unwrap().len(), &page["total"]),
        (1, &5.into())
    );

    let (status, one) = get(&node, "/api/v1/attacks/seed");
    assert_eq!(status, 200);
    assert_eq!(
        one["request"]["headers"][0],
        serde_json::json!({"name": "host", "value": "api.example.com"})
    );
    assert_eq!(one["response"]["status"], 200);
    assert_eq!(one["response"]["body"], "{}");
    let (status, missing) = get(&node, "/api/v1/attacks/nope");
    assert_eq!((status, &missing["error"]), (404, &"no such attack".into()));
    let (status, bad) = get(&node, "/api/v1/attacks?status=abc");
    assert_eq!(status, 400);
    assert!(
        bad["error"].as_str().unwrap().starts_with("status:"),
        "{bad}"
    );
    let (status, bad) = get(&node, "/api/v1/attacks?colour=red");
    assert_eq!(status, 400);
    assert!(bad["error"].as_str().unwrap().contains("colour"), "{bad}");

    let (status, stats) = get(&node, "/api/v1/stats");
    assert_eq!(status, 200);
    assert_eq!(stats["total"], 5);
    assert_eq!(
        stats["by_class"][0],
        serde_json::json!({"class": "lfi", "label": "Local file inclusion", "count": 2})
    );
    assert_eq!(stats["by_class"].as_array().unwrap().len(), 4);
    let (_, stats) = get(&node, "/api/v1/stats?class=sqli");
    assert_eq!(stats["total"], 1);

    let (status, body) = common::get_blocking(node.addr(), "/api/v1/export?class=lfi").unwrap();
    assert_eq!(status.as_u16(), 200);
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut exported: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    exported.sort_unstable();
    assert_eq!(exported, ["cmd", "seed"]);
    assert!(lines.iter().all(|l| l["request"]["headers"].is_array()));

    let (status, doc) = get(&node, "/api/v1/openapi.json");
    assert_eq!((status, &doc["openapi"]), (200, &"3.1.0".into()));

    // API discovery: every exchange analysed (the benign one too) is in the inventory.
    assert!(node.flush_inventory(std::time::Duration::from_secs(10)));
    let (status, inv) = get(&node, "/api/v1/inventory");
    assert_eq!(status, 200, "{inv}");
    let templates: Vec<String> = inv["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap(),
                e["template"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        templates,
        [
            "POST /api/comments",
            "POST /api/ping",
            "GET /api/products",
            "GET /api/reports/{report_id}",
            "GET /api/users/{user_id}",
            "GET /etc/passwd",
        ]
    );
    let (_, narrowed) = get(&node, "/api/v1/inventory?method=post&path=/api/p");
    assert_eq!(narrowed["total"], 1);
    assert_eq!(narrowed["items"][0]["template"], "/api/ping");
    assert_eq!(
        narrowed["items"][0]["attacks"],
        "/attacks?host=api.example.com&path=%2Fapi%2Fping"
    );
    let (status, doc) = get(&node, "/api/v1/inventory/openapi.json?host=API.example.com");
    assert_eq!((status, &doc["openapi"]), (200, &"3.1.0".into()));
    assert_eq!(
        doc["paths"]["/api/users/{user_id}"]["get"]["parameters"][0]["schema"],
        serde_json::json!({"type": "integer"})
    );
    let (status, empty) = get(&node, "/api/v1/inventory/openapi.json?host=nowhere");
    assert_eq!((status, &empty["paths"]), (200, &serde_json::json!({})));
    let (status, bad) = get(&node, "/api/v1/inventory?spec=ghost");
    assert_eq!(status, 400, "{bad}");

    schemathesis(&node);
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

fn schemathesis_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(bin);
    }
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/schemathesis");
    assert!(
        bin.is_file(),
        "no schemathesis at {} (PyPI; `make test` installs it into .venv)",
        bin.display()
    );
    bin
}

/// Every operation of the document, with generated and edge-case parameters.
fn schemathesis(node: &oob_mirror_node::app::App) {
    let out = Command::new(schemathesis_bin())
        .args([
            "run",
            &format!("http://{}/api/v1/openapi.json", node.addr()),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--workers",
            "1",
            "--no-color",
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{said}");
    // It tested the six operations: a run that tested nothing must not pass.
    assert!(
        said.contains("Tested: 6") && said.contains("No issues found"),
        "{said}"
    );
    eprintln!("{said}");
}
