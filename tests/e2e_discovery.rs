//! API discovery under the real Envoy with the filter: a synthetic shop API whose ground truth
//! the test knows (tests/support/shop.rs: 30 endpoints with integer, UUID, hex, date, email and
//! slug segments, nested JSON bodies with optional fields, emails and card numbers) goes through
//! Envoy; the node (the App in process, SQLite in a temp dir) must discover exactly its
//! templates (precision and recall 100%), the field types and the sensitive data, export an
//! OpenAPI document that openapi-spec-validator accepts, and list exactly the shadow and zombie
//! endpoints against a spec with two endpoints missing and two extra. A second run sends
//! random paths under a tight template bound: the bound holds and the cut is counted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use oob_mirror_node::analysis::pool::PoolConfig;
use oob_mirror_node::app::{App, AppConfig};
use oob_mirror_node::inventory;
use oob_mirror_node::store::{Backend, StoreConfig};
use serde_json::Value;
use support::client::{Client, Proto, Req};
use support::shop;
use support::upstream::Upstream;
use support::wait::poll_until;
use support::{Envoy, EnvoyConfig, EVENTUALLY};

const HOST: &str = "shop.example.com";
const JWT: &str =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ";

/// The spec the operator gives: the ground truth without `/health` and `/admin/stats`, with two
/// endpoints the traffic never calls, its variables named its own way, under `servers`' `/shop`.
fn spec_yaml() -> String {
    let mut paths: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (m, t) in shop::ENDPOINTS {
        if *t == "/shop/health" || *t == "/shop/admin/stats" {
            continue;
        }
        let p: Vec<String> = t
            .trim_start_matches("/shop")
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    "{id}".to_owned()
                } else {
                    s.to_owned()
                }
            })
            .collect();
        let mut p = p.join("/");
        // Two variables in one path need two names.
        if p.matches("{id}").count() == 2 {
            p = p.replacen("{id}", "{parent}", 1);
        }
        paths.entry(p).or_default().push(m.to_ascii_lowercase());
    }
    paths
        .entry("/legacy/export".into())
        .or_default()
        .push("get".into());
    paths
        .entry("/products/{id}".into())
        .or_default()
        .push("delete".into());
    let mut y = String::from(
        "openapi: 3.0.3\ninfo: {title: shop, version: '1'}\nservers:\n  - url: https://shop.example.com/shop\npaths:\n",
    );
    for (p, methods) in paths {
        y.push_str(&format!("  '{p}':\n"));
        for m in methods {
            y.push_str(&format!(
                "    {m}: {{responses: {{'200': {{description: ok}}}}}}\n"
            ));
        }
    }
    y
}

struct Rig {
    envoy: Envoy,
    node: App,
    _upstream: Upstream,
    client: Client,
    dir: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig(what: &str, discovery: inventory::Config) -> Rig {
    let dir = std::env::temp_dir().join(format!(
        "oob-mirror-e2e-discovery-{what}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = Upstream::start();
    let node = App::start(AppConfig {
        pool: PoolConfig {
            threads: 2,
            ..PoolConfig::default()
        },
        store: Some(StoreConfig {
            store: Some(Backend::Sqlite(dir.join("node.sqlite"))),
            ..StoreConfig::default()
        }),
        inventory: Some(discovery),
        ..AppConfig::new(([127, 0, 0, 1], 0).into())
    })
    .unwrap();
    let envoy = Envoy::start(&EnvoyConfig::new(upstream.port(), node.addr().port()));
    Rig {
        envoy,
        node,
        _upstream: upstream,
        client: Client::new(),
        dir,
    }
}

impl Rig {
    /// Waits until `n` exchanges are analysed, then writes the inventory.
    fn settle(&self, n: u64) {
        let detector = self.node.detector();
        let done = poll_until(EVENTUALLY, || {
            (detector.snapshot().exchanges_analysed >= n).then_some(())
        });
        assert!(
            done.is_some(),
            "analysed {} of {n}: {:?}\n{}",
            detector.snapshot().exchanges_analysed,
            detector.snapshot(),
            self.envoy.log()
        );
        assert!(self.node.flush_inventory(EVENTUALLY));
    }

    fn node_get(&self, path: &str) -> (u16, String) {
        let r = self.client.send(self.node.addr(), &Req::get(path));
        (r.status, r.body_str())
    }

    fn node_json(&self, path: &str) -> Value {
        let (status, body) = self.node_get(path);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn rows(e: &Value, key: &str, cols: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = e[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            cols.iter()
                .map(|c| match &r[*c] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    out.sort();
    out
}

fn endpoint<'a>(items: &'a [Value], method: &str, template: &str) -> &'a Value {
    items
        .iter()
        .find(|e| e["method"] == method && e["template"] == template)
        .unwrap_or_else(|| panic!("{method} {template} not discovered"))
}

fn validator() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/openapi-spec-validator");
    assert!(
        bin.is_file(),
        "no {} (PyPI; the Makefile installs it)",
        bin.display()
    );
    bin
}

#[test]
fn the_shop_api_is_discovered_exactly_through_envoy() {
    let specs = inventory::spec::parse(&spec_yaml(), None, "shop.yaml").unwrap();
    let r = rig(
        "shop",
        inventory::Config {
            specs,
            ..inventory::Config::default()
        },
    );
    let requests = shop::requests();
    for (method, path, body) in &requests {
        let mut req = Req::new(Proto::H1, method, path).header("host", HOST);
        if path.starts_with("/shop/users") {
            req = req.header("authorization", format!("Bearer {JWT}"));
        }
        if path.starts_with("/shop/carts") {
            req = req.header("cookie", "theme=dark; session_id=s3ss10nV4lu3xyz");
        }
        if path.starts_with("/shop/admin") {
            req = req.header("x-api-key", "k3yV4lu3-0123456789");
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string().into_bytes());
        }
        let resp = r.client.send(r.envoy.addr(), &req);
        assert!(
            matches!(resp.status, 200 | 201 | 204),
            "{method} {path}: {} {}",
            resp.status,
            resp.body_str()
        );
    }
    r.settle(requests.len() as u64);
    let snapshot = r.node.detector().snapshot();
    assert_eq!(
        snapshot.exchanges_with_attacks, 0,
        "benign traffic flagged: {snapshot:?}"
    );

    let inv = r.node_json(&format!("/api/v1/inventory?host={HOST}&limit=10000"));
    let items = inv["items"].as_array().unwrap().clone();
    let discovered: BTreeSet<(String, String)> = items
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_owned(),
                e["template"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let truth: BTreeSet<(String, String)> = shop::ENDPOINTS
        .iter()
        .map(|(m, t)| ((*m).to_owned(), (*t).to_owned()))
        .collect();
    let hits = discovered.intersection(&truth).count() as f64;
    let (precision, recall) = (hits / discovered.len() as f64, hits / truth.len() as f64);
    eprintln!(
        "discovered {} templates, ground truth {}: precision {:.3}, recall {:.3}",
        discovered.len(),
        truth.len(),
        precision,
        recall
    );
    assert_eq!(
        discovered.difference(&truth).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "not in the ground truth"
    );
    assert_eq!(
        truth.difference(&discovered).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "missed"
    );
    assert_eq!((precision, recall), (1.0, 1.0));
    let total: u64 = items.iter().map(|e| e["count"].as_u64().unwrap()).sum();
    assert_eq!(total, requests.len() as u64);

    // Field types, how often each is present, path variables.
    let users = endpoint(&items, "POST", "/shop/users");
    assert_eq!(
        rows(users, "request_fields", &["name", "type", "count"]),
        [
            "address object 3",
            "address.city string 3",
            "address.zip string 2",
            "email string 3",
            "name string 3",
            "tags array 3",
            "tags[] string 3",
        ]
    );
    assert_eq!(rows(users, "statuses", &["status", "count"]), ["201 3"]);
    assert_eq!(rows(users, "auth", &["name"]), ["bearer"]);
    let user = endpoint(&items, "GET", "/shop/users/{user_id}");
    assert_eq!(
        rows(
            user,
            "response_fields",
            &["status", "name", "type", "count"]
        ),
        [
            "200 email string 3",
            "200 id integer 3",
            "200 name string 3",
            "200 profile object 3",
            "200 profile.age integer 3",
            "200 profile.nickname null 2",
            "200 profile.vip boolean 3",
        ]
    );
    assert_eq!(
        rows(user, "params", &["name", "kind", "count"]),
        ["user_id integer 3"]
    );
    let orders = endpoint(&items, "POST", "/shop/users/{user_id}/orders");
    assert_eq!(
        rows(orders, "request_fields", &["name", "type", "count"]),
        [
            "items array 2",
            "items[] object 2",
            "items[].note string 1",
            "items[].qty integer 2",
            "items[].sku string 2",
            "payment object 2",
            "payment.card string 2",
            "payment.method string 2",
        ]
    );
    let order = endpoint(&items, "GET", "/shop/users/{user_id}/orders/{order_id}");
    assert_eq!(
        rows(order, "params", &["name", "kind", "count"]),
        ["order_id uuid 2", "user_id integer 2"]
    );
    for (m, t, want) in [
        ("GET", "/shop/products/{product_id}", "product_id hex 2"),
        ("GET", "/shop/carts/{cart_id}", "cart_id hex 2"),
        ("GET", "/shop/reports/{report_date}", "report_date date 2"),
        ("GET", "/shop/lookup/{lookup_email}", "lookup_email email 2"),
        (
            "GET",
            "/shop/categories/{category_slug}",
            // The first four were literals until the fifth slug made them one variable; they
            // count as the parameter too, whichever order the batches arrived in.
            "category_slug slug 6",
        ),
        ("GET", "/shop/invoices/{invoice_id}", "invoice_id uuid 2"),
    ] {
        assert_eq!(
            rows(endpoint(&items, m, t), "params", &["name", "kind", "count"]),
            [want],
            "{m} {t}"
        );
    }
    assert_eq!(
        endpoint(&items, "GET", "/shop/categories/{category_slug}")["count"],
        6
    );
    assert_eq!(
        rows(
            endpoint(&items, "GET", "/shop/search"),
            "query",
            &["name", "type", "count"]
        ),
        ["in_stock boolean 1", "q string 2"]
    );
    assert_eq!(
        rows(
            endpoint(&items, "GET", "/shop/carts/{cart_id}"),
            "auth",
            &["name"]
        ),
        ["cookie:session_id"]
    );
    assert_eq!(
        rows(
            endpoint(&items, "GET", "/shop/admin/stats"),
            "auth",
            &["name"]
        ),
        ["header:x-api-key"]
    );

    // Sensitive data, by endpoint, place and field.
    let mut sensitive = Vec::new();
    for e in &items {
        for s in rows(e, "sensitive", &["in", "field", "type"]) {
            sensitive.push(format!(
                "{} {} {s}",
                e["method"].as_str().unwrap(),
                e["template"].as_str().unwrap()
            ));
        }
    }
    sensitive.sort();
    assert_eq!(
        sensitive,
        [
            "GET /shop/lookup/{lookup_email} response email email",
            "GET /shop/users response users[].email email",
            "GET /shop/users/{user_id} response email email",
            "GET /shop/users/{user_id}/orders/{order_id} response payment.card card",
            "POST /shop/users request email email",
            "POST /shop/users/{user_id}/orders request payment.card card",
            "PUT /shop/users/{user_id} request email email",
        ]
    );
    let (_, cards) = r.node_get(&format!("/api/v1/inventory?host={HOST}&sensitive=card"));
    let cards: Value = serde_json::from_str(&cards).unwrap();
    assert_eq!(cards["total"], 2);

    // The OpenAPI export validates.
    let (status, doc) = r.node_get(&format!("/api/v1/inventory/openapi.json?host={HOST}"));
    assert_eq!(status, 200, "{doc}");
    let parsed: Value = serde_json::from_str(&doc).unwrap();
    let operations: usize = parsed["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().unwrap().len())
        .sum();
    assert_eq!(operations, 30);
    let file = r.dir.join("shop-openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let out = Command::new(validator()).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Shadow and zombie, exactly.
    assert_eq!((&inv["shadow"], &inv["zombie"]), (&2.into(), &2.into()));
    let shadow = r.node_json(&format!("/api/v1/inventory?host={HOST}&spec=shadow"));
    assert_eq!(
        rows(&shadow, "items", &["method", "template"]),
        ["GET /shop/admin/stats", "GET /shop/health"]
    );
    assert_eq!(
        rows(&inv, "zombies", &["method", "path", "last_seen"]),
        [
            "DELETE /shop/products/{id} null",
            "GET /shop/legacy/export null"
        ]
    );
    let documented = r.node_json(&format!("/api/v1/inventory?host={HOST}&spec=documented"));
    assert_eq!(documented["total"], 28);

    // No value reached the store: names, types and counts only.
    let mut stored = Vec::new();
    for f in std::fs::read_dir(&r.dir).unwrap() {
        let p = f.unwrap().path();
        if p.to_string_lossy().contains("node.sqlite") {
            stored.extend(std::fs::read(&p).unwrap());
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("payment.card"),
        "the inventory is not in the files"
    );
    for value in [
        shop::CARD,
        "user1@example.com",
        "ada@example.com",
        "s3ss10nV4lu3xyz",
        "10115",
        "Berlin",
    ] {
        assert!(!stored.contains(value), "{value} is in the store's files");
    }
}

#[test]
fn random_paths_stay_within_the_bound_and_the_cut_is_counted() {
    let mut discovery = inventory::Config::default();
    discovery.limits.max_templates = 50;
    discovery.limits.max_children = usize::MAX;
    let r = rig("hostile", discovery);
    let n = 400u64;
    let mut state: u64 = 7;
    for _ in 0..n {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let req =
            Req::get(&format!("/noise/r{:x}", state >> 24)).header("host", "noise.example.com");
        assert_eq!(r.client.send(r.envoy.addr(), &req).status, 200);
    }
    r.settle(n);
    let inv = r.node_json("/api/v1/inventory?host=noise.example.com");
    assert_eq!(inv["total"], 50);
    assert_eq!(
        rows(&inv, "cuts", &["host", "reason", "count"]),
        [format!("noise.example.com templates {}", n - 50)]
    );
    let (_, metrics) = r.node_get("/metrics");
    assert!(
        metrics.contains(&format!(
            "oob_mirror_node_inventory_cut_total{{reason=\"templates\"}} {}",
            n - 50
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("oob_mirror_node_inventory_templates 50"),
        "{metrics}"
    );
}
