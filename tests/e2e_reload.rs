//! The filter delivered as istiod delivers it, then changed under load.
//!
//! Istio sends a WasmPlugin to the gateway by ECDS: an HTTP filter named `<ns>.<name>` whose
//! Wasm configuration is found by discovery, with no `vm_id`, the plugin's `pluginConfig` as
//! golang/protobuf jsonpb text (keys sorted, no whitespace, `<`, `>` and `&` as `\u003c`,
//! `\u003e`, `\u0026`), `failStrategy: FAIL_OPEN` as `failure_policy: FAIL_OPEN` and
//! `vmConfig.env` entries with `valueFrom: HOST` as `host_env_keys`. This test renders
//! `istio/wasmplugin.yaml` by those rules and serves it to the real Envoy from a watched
//! discovery file, which it then replaces:
//! - a `pluginConfig` change under steady load (keep-alive clients, the case where an exchange
//!   per open connection used to be lost) loses no record and the accounting stays exact,
//!   the new configuration applying to new exchanges;
//! - a configuration the filter refuses, on an update: traffic goes on, the old configuration
//!   keeps mirroring, one log line names the field.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use support::client::Req;
use support::envoy::{write_ecds, Filter};
use support::paths::{repo_root, wasm_module, TempDir};
use support::records::{id_census, start_node};
use support::wait::poll_until;
use support::{stats, Envoy, EnvoyConfig, Upstream, EVENTUALLY};

/// The filter's name as Istio gives it: the WasmPlugin's namespace and name.
const FILTER_NAME: &str = "istio-system.oob-mirror";
/// From Istio 1.30 a WasmPlugin is translated to a TrafficExtension of this name.
const TRANSLATED_NAME: &str = "istio-system.oob-mirror~istio-translated-wasmplugin";

/// A JSON value as golang/protobuf's jsonpb writes it for a `google.protobuf.Struct`.
fn jsonpb(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", jsonpb(&json!(k)), jsonpb(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(jsonpb).collect::<Vec<_>>().join(",")
        ),
        Value::String(_) => serde_json::to_string(v)
            .unwrap()
            .replace('<', "\\u003c")
            .replace('>', "\\u003e")
            .replace('&', "\\u0026"),
        other => other.to_string(),
    }
}

#[test]
fn jsonpb_sorts_keys_and_escapes_as_go_does() {
    assert_eq!(
        jsonpb(&json!({"b": 1, "a": {"d": "<x&y>", "c": [true, 2]}})),
        r#"{"a":{"c":[true,2],"d":"\u003cx\u0026y\u003e"},"b":1}"#
    );
}

/// `istio/wasmplugin.yaml` as a YAML value (its placeholders filled).
fn wasmplugin() -> Value {
    let text = std::fs::read_to_string(repo_root().join("istio/wasmplugin.yaml")).unwrap();
    let text = text
        .replace("${GATEWAY_NAMESPACE}", "istio-system")
        .replace("${NODE_PORT}", "9090")
        .replace("${NODE_SERVICE}", "oob-mirror-node")
        .replace("${NODE_NAMESPACE}", "oob-mirror")
        .replace("${IMAGE}", "registry.example.com/oob-mirror:test")
        .replace("${IMAGE_SHA256}", &"ab".repeat(32));
    let yaml: serde_norway::Value =
        serde_norway::Value::deserialize(serde_norway::Deserializer::from_str(&text)).unwrap();
    serde_json::to_value(yaml).unwrap()
}

/// The Wasm filter configuration istiod makes of the WasmPlugin, for this module, with
/// `plugin_config` for its `pluginConfig`.
fn istio_wasm(plugin: &Value, module: &Path, plugin_config: &Value) -> Value {
    istio_wasm_named(FILTER_NAME, plugin, module, plugin_config)
}

fn istio_wasm_named(name: &str, plugin: &Value, module: &Path, plugin_config: &Value) -> Value {
    let spec = &plugin["spec"];
    let host_env_keys: Vec<&str> = spec["vmConfig"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["valueFrom"] == "HOST")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
        "config": {
            "name": name,
            "root_id": spec["pluginName"],
            "vm_config": {
                "runtime": "envoy.wasm.runtime.v8",
                "code": { "local": { "filename": module.display().to_string() } },
                "environment_variables": { "host_env_keys": host_env_keys }
            },
            "configuration": {
                "@type": "type.googleapis.com/google.protobuf.StringValue",
                "value": jsonpb(plugin_config)
            },
            "failure_policy": "FAIL_OPEN"
        }
    })
}

/// The WasmPlugin's `pluginConfig` pointed at the test's node cluster, flushing often.
fn plugin_config(plugin: &Value) -> Value {
    let mut config = plugin["spec"]["pluginConfig"].clone();
    config["node"]["cluster"] = json!("oob_mirror_node");
    config["batch"] = json!({ "flush_ms": 20 });
    config
}

struct Rig {
    name: &'static str,
    envoy: Envoy,
    node: support::records::Node,
    _upstream: Upstream,
    dir: TempDir,
    plugin: Value,
    version: u64,
}

impl Rig {
    fn start(config: &Value) -> Rig {
        Rig::start_named(FILTER_NAME, config)
    }

    fn start_named(name: &'static str, config: &Value) -> Rig {
        let upstream = Upstream::start();
        let node = start_node();
        let dir = TempDir::new("ecds");
        let plugin = wasmplugin();
        write_ecds(
            dir.path(),
            name,
            1,
            &istio_wasm_named(name, &plugin, &wasm_module(), config),
        );
        let mut envoy_config = EnvoyConfig::new(upstream.port(), node.port());
        envoy_config.filter = Filter::Ecds {
            name: name.to_owned(),
            dir: dir.path().to_owned(),
        };
        let envoy = Envoy::start(&envoy_config);
        Rig {
            name,
            envoy,
            node,
            _upstream: upstream,
            dir,
            plugin,
            version: 1,
        }
    }

    /// Serves `config` as the next version and waits until Envoy took it (or refused it).
    fn update(&mut self, config: &Value) {
        let before = self.ecds_updates();
        self.version += 1;
        write_ecds(
            self.dir.path(),
            self.name,
            self.version,
            &istio_wasm_named(self.name, &self.plugin, &wasm_module(), config),
        );
        let took = poll_until(EVENTUALLY, || (self.ecds_updates() > before).then_some(()));
        assert!(
            took.is_some(),
            "Envoy neither took nor refused ECDS version {}:\n{}",
            self.version,
            self.envoy.log()
        );
    }

    fn ecds_stat(&self, what: &str) -> i128 {
        stats::envoy_stat(
            &self.envoy,
            &format!(
                "extension_config_discovery.http_filter.{}.{what}",
                self.name
            ),
        )
    }

    /// Updates taken plus refused.
    fn ecds_updates(&self) -> i128 {
        self.ecds_stat("config_reload") + self.ecds_stat("config_fail")
    }
}

#[test]
fn a_plugin_config_change_under_load_loses_no_record() {
    config_changes_under_load_lose_no_record(FILTER_NAME);
}

/// Istio 1.30's TrafficExtension name for a translated WasmPlugin: the same delivery, the same
/// lossless changes.
#[test]
fn the_istio_1_30_translated_name_changes_losslessly_too() {
    config_changes_under_load_lose_no_record(TRANSLATED_NAME);
}

/// Two `pluginConfig` changes of the filter `name` under 500 exchanges a second on 16
/// keep-alive connections: every exchange of the load mirrored whole, none lost, and the
/// excluded paths of the second configuration not mirrored while it applies.
fn config_changes_under_load_lose_no_record(name: &'static str) {
    let plugin = wasmplugin();
    let first = plugin_config(&plugin);
    let mut rig = Rig::start_named(name, &first);
    assert_eq!(rig.ecds_stat("config_reload"), 1, "the first version");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Keep-alive connections: each has a stream open under the old root when the change lands.
    let load = support::load::Load::start(&rt, rig.envoy.addr(), 500, 16);
    std::thread::sleep(Duration::from_secs(2));
    let mut second = first.clone();
    second["scope"] = json!({ "exclude_paths": ["/excluded/"] });
    rig.update(&second);
    assert_eq!(rig.ecds_stat("config_reload"), 2, "the change was taken");
    std::thread::sleep(Duration::from_secs(1));
    // New exchanges follow the new configuration.
    let client = support::client::Client::new();
    for i in 0..5 {
        let resp = client.send(
            rig.envoy.addr(),
            &Req::get(&format!("/excluded/{i}")).header("x-request-id", format!("excluded-{i}")),
        );
        assert_eq!(resp.status, 200);
    }
    // And back, with the load still on.
    rig.update(&first);
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop(&rt);
    assert_eq!(report.failed, 0, "client errors: {:?}", report.failures);

    let s = stats::wait_drained(&rig.envoy, EVENTUALLY);
    let mirrored = i128::from(report.ok);
    assert_eq!(s.get("exchanges_skipped_scope"), 5, "{s:?}");
    assert_eq!(
        s.get("records_captured"),
        2 * mirrored,
        "every exchange of the load captured, none of the excluded: {s:?}"
    );
    assert_eq!(s.dropped(), 0, "{s:?}");
    assert_eq!(s.get("records_sent"), 2 * mirrored, "{s:?}");
    let records = rig.node.records();
    assert_eq!(records.len() as i128, 2 * mirrored, "records at the node");
    let census = id_census(&records);
    assert_eq!(census.len() as i128, mirrored);
    assert!(
        census.values().all(|c| *c == (1, 1)),
        "every exchange paired"
    );
    assert!(!records.iter().any(|r| r
        .path
        .as_deref()
        .is_some_and(|p| p.starts_with("/excluded/"))));
    eprintln!(
        "{} exchanges at 500/s over 16 keep-alive connections through two pluginConfig \
         changes: {} records captured, {} delivered, none lost",
        report.ok,
        s.get("records_captured"),
        records.len()
    );
}

#[test]
fn a_refused_configuration_leaves_the_old_one_mirroring() {
    let plugin = wasmplugin();
    let first = plugin_config(&plugin);
    let mut rig = Rig::start(&first);
    let client = support::client::Client::new();
    let addr = rig.envoy.addr();
    let send = |id: &str| {
        let resp = client.send(
            addr,
            &Req::get(&format!("/{id}")).header("x-request-id", id),
        );
        assert_eq!(resp.status, 200, "{id}");
    };
    send("before");
    let mut bad = first.clone();
    bad["node"]["clustr"] = json!("typo");
    rig.update(&bad);
    send("after");
    let records = support::records::wait_records(&rig.node, 4, EVENTUALLY);
    // Both exchanges mirrored, whole: the old configuration mirrors on.
    let mut paths: Vec<(String, bool)> = records
        .iter()
        .map(|r| {
            let path = records
                .iter()
                .find(|q| q.id == r.id && q.is_request())
                .and_then(|q| q.path.clone())
                .unwrap_or_default();
            (path, r.is_request())
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/after".to_owned(), false),
            ("/after".to_owned(), true),
            ("/before".to_owned(), false),
            ("/before".to_owned(), true)
        ]
    );
    assert_eq!(rig.ecds_stat("config_fail"), 1, "Envoy refused the update");
    let log = rig.envoy.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("invalid configuration") && l.contains("node.clustr"))
        .collect();
    assert!(
        !refusals.is_empty(),
        "no log line names the refused field:\n{log}"
    );
    eprintln!(
        "refused update: config_fail {}, config_reload {}; the lines:\n{}",
        rig.ecds_stat("config_fail"),
        rig.ecds_stat("config_reload"),
        refusals.join("\n")
    );
}

/// A configuration the filter refuses on first load: what Envoy does with FAIL_OPEN.
#[test]
fn a_refused_first_configuration_is_what_envoy_says() {
    let plugin = wasmplugin();
    let mut bad = plugin_config(&plugin);
    bad["node"]["clustr"] = json!("typo");
    let rig = Rig::start(&bad);
    let client = support::client::Client::new();
    let resp = client.send(
        rig.envoy.addr(),
        &Req::get("/first").header("x-request-id", "first"),
    );
    let log = rig.envoy.log();
    eprintln!(
        "first load refused: answer {} {:?}; config_reload {}, config_fail {}",
        resp.status,
        resp.body_str(),
        rig.ecds_stat("config_reload"),
        rig.ecds_stat("config_fail"),
    );
    assert!(
        log.lines()
            .any(|l| l.contains("invalid configuration") && l.contains("node.clustr")),
        "no log line names the refused field:\n{log}"
    );
    // Envoy refuses the discovered configuration ("Filesystem config update rejected: Unable to
    // create Wasm plugin"), so the filter chain has an extension without a configuration and
    // no default: Envoy rejects every stream with a 500 of its own, FAIL_OPEN or not (the
    // failure policy is the plugin's, and there is no plugin).
    assert_eq!(rig.ecds_stat("config_fail"), 1);
    assert_eq!(resp.status, 500, "{}", resp.body_str());
    assert_eq!(rig.node.record_count(), 0);
}

/// `module` with a custom section appended: the same code, other bytes, so Envoy sees a new
/// module (its VM key hashes the code) as a new image would give it.
fn new_module(module: &Path, dir: &Path, generation: u8) -> std::path::PathBuf {
    let mut bytes = std::fs::read(module).unwrap();
    let name = b"oob-mirror-test-generation";
    let payload_len = 1 + name.len() + 1;
    bytes.push(0); // custom section
    bytes.push(u8::try_from(payload_len).unwrap());
    bytes.push(u8::try_from(name.len()).unwrap());
    bytes.extend_from_slice(name);
    bytes.push(generation);
    let path = dir.join(format!("oob_mirror-{generation}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A new module under load: new VMs take new exchanges, the old ones are destroyed with what
/// they hold once their streams end. Measured and bounded, not zero.
#[test]
fn a_new_module_under_load_loses_at_most_what_the_old_vms_held() {
    let plugin = wasmplugin();
    let config = plugin_config(&plugin);
    let mut rig = Rig::start(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let load = support::load::Load::start(&rt, rig.envoy.addr(), 500, 16);
    std::thread::sleep(Duration::from_secs(2));
    let before = stats::read(&rig.envoy);
    let module = new_module(&wasm_module(), rig.dir.path(), 2);
    rig.version += 1;
    write_ecds(
        rig.dir.path(),
        FILTER_NAME,
        rig.version,
        &istio_wasm(&rig.plugin, &module, &config),
    );
    let took = poll_until(EVENTUALLY, || {
        (rig.ecds_stat("config_reload") >= 2).then_some(())
    });
    assert!(
        took.is_some(),
        "the new module was not taken:\n{}",
        rig.envoy.log()
    );
    std::thread::sleep(Duration::from_secs(2));
    let report = load.stop(&rt);
    assert_eq!(report.failed, 0, "client errors: {:?}", report.failures);
    // Settled: the live VMs have nothing queued; what the old ones held stays in the gauges,
    // which outlive them. A batch in flight when its VM went may have reached the node all the
    // same (its reply had nowhere to go).
    // Settled when everything arrived, or nothing moved for a second.
    let mut last: Option<(i128, i128)> = None;
    let settled = poll_until(EVENTUALLY, || {
        std::thread::sleep(Duration::from_millis(500));
        let s = stats::read(&rig.envoy);
        let delivered = rig.node.record_count() as i128;
        let now = (delivered, s.get("records_sent"));
        let still = last == Some(now);
        last = Some(now);
        (s.check_invariant().is_ok() && (delivered == s.get("records_captured") || still))
            .then_some((s, delivered))
    });
    let (s, delivered) =
        settled.unwrap_or_else(|| panic!("did not settle: {:?}", stats::read(&rig.envoy)));
    let held = s.get("queued_records") + s.get("inflight_records");
    let lost = s.get("records_captured") - delivered;
    assert_eq!(
        s.get("records_captured"),
        2 * i128::from(report.ok),
        "every exchange captured: {s:?}"
    );
    assert_eq!(s.dropped(), 0, "{s:?}");
    // What the node missed is among what the old VMs still held, which the gauges show.
    assert!(
        (0..=held).contains(&lost),
        "lost {lost}, held {held}: {s:?}"
    );
    let log = rig.envoy.log();
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration replaced: shipping"))
        .collect();
    // One line from each old root (one per worker) as it was asked to end.
    assert!(!said.is_empty(), "no old root said what it held:\n{log}");
    eprintln!(
        "new module under {} exchanges ({} before the change): {lost} records never reached \
         the node; the old VMs' gauges hold {held} (queued {}, in flight {}); the old roots \
         said:\n{}",
        report.ok,
        before.get("records_captured") / 2,
        s.get("queued_records"),
        s.get("inflight_records"),
        said.join("\n")
    );
}

/// pilot-agent's rollout: drain the listeners, wait, SIGKILL. What the node misses is what
/// the filter had not shipped at the kill.
#[test]
fn drain_then_sigkill_loses_at_most_a_flush_interval() {
    let plugin = wasmplugin();
    let config = plugin_config(&plugin);
    let rig = Rig::start(&config);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let load = support::load::Load::start(&rt, rig.envoy.addr(), 500, 16);
    std::thread::sleep(Duration::from_secs(2));
    let drain = support::raw_http::post(
        rig.envoy.admin_addr(),
        "/drain_listeners?graceful",
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(drain.status, 200);
    // terminationDrainDuration (5 s by default; shorter here), the ticks still firing.
    std::thread::sleep(Duration::from_secs(2));
    let last = stats::read(&rig.envoy);
    let pid = rig.envoy.pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let report = load.stop(&rt);
    std::thread::sleep(Duration::from_millis(500));
    let delivered = rig.node.record_count() as i128;
    // Each exchange a client saw answered had both its records captured before the kill.
    let answered = 2 * i128::from(report.ok);
    let lost = answered - delivered;
    eprintln!(
        "drain then SIGKILL under 500/s: {} exchanges answered ({} client errors at the kill), \
         {answered} of their records captured, {delivered} delivered: {lost} lost; at the last \
         reading before the kill {} queued and {} in flight",
        report.ok,
        report.failed,
        last.get("queued_records"),
        last.get("inflight_records"),
    );
    // What the filter held at the kill: a flush interval (20 ms here) and the replies it waited
    // for, at 500 exchanges a second, two records each. Below zero: the kill also cut answers
    // whose records had gone to the node already (the clients' errors).
    let cut = 2 * i128::from(report.failed);
    assert!((-cut..=100).contains(&lost), "lost {lost}: {last:?}");
}
