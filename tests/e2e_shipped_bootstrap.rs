//! The plain-Envoy bootstrap shipped in `envoy/envoy.yaml`: the real Envoy
//! accepts it as it is (run from the repository root, where its relative
//! module path `dist/oob_mirror.wasm` points), and the plugin configuration
//! embedded in it is one the filter's own configuration code accepts.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::process::{Command, Stdio};

use oob_mirror::config::Config;
use serde_norway::Value;

use support::envoy::critical_wasm_lines;
use support::paths::{envoy_bin, repo_root};

/// The bootstrap, relative to the repository root.
const BOOTSTRAP: &str = "envoy/envoy.yaml";
/// The module path written in the bootstrap, relative to the repository root.
const MODULE: &str = "dist/oob_mirror.wasm";

fn bootstrap() -> Value {
    let path = repo_root().join(BOOTSTRAP);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// `value[key]` as a sequence (empty when absent).
fn seq<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn name_of(value: &Value) -> Option<&str> {
    value.get("name").and_then(Value::as_str)
}

/// Every HTTP filter of every HTTP connection manager of every listener.
fn http_filters(bootstrap: &Value) -> Vec<&Value> {
    let statics = &bootstrap["static_resources"];
    seq(statics, "listeners")
        .iter()
        .flat_map(|l| seq(l, "filter_chains"))
        .flat_map(|c| seq(c, "filters"))
        .filter(|f| name_of(f) == Some("envoy.filters.network.http_connection_manager"))
        .flat_map(|hcm| seq(&hcm["typed_config"], "http_filters"))
        .collect()
}

#[test]
fn envoy_validates_the_shipped_bootstrap() {
    let root = repo_root();
    let module = root.join(MODULE);
    assert!(
        module.is_file(),
        "{} is missing: build it with `make wasm` (the bootstrap loads it from there)",
        module.display()
    );
    let bin = envoy_bin();
    // `--mode validate` loads the module and runs its configuration (a
    // configuration the filter refuses fails validation), binds no port and
    // exits on its own.
    let out = Command::new(&bin)
        .current_dir(&root)
        .args(["--mode", "validate", "-c", BOOTSTRAP, "-l", "info"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "envoy --mode validate -c {BOOTSTRAP} failed ({}); its output:\n{log}",
        out.status
    );
    assert!(
        log.contains(&format!("configuration '{BOOTSTRAP}' OK")),
        "no `configuration ... OK` line; Envoy's output:\n{log}"
    );
    let critical = critical_wasm_lines(&log);
    assert!(
        critical.is_empty(),
        "critical wasm lines while validating:\n{}\nfull output:\n{log}",
        critical.join("\n")
    );
}

#[test]
fn the_shipped_plugin_configuration_is_accepted_by_the_filter() {
    let bootstrap = bootstrap();
    let wasm: Vec<&Value> = http_filters(&bootstrap)
        .into_iter()
        .filter(|f| name_of(f) == Some("envoy.filters.http.wasm"))
        .collect();
    assert_eq!(
        wasm.len(),
        1,
        "expected one wasm HTTP filter in {BOOTSTRAP}: {wasm:#?}"
    );
    let config = &wasm[0]["typed_config"]["config"];
    assert_eq!(
        config["root_id"].as_str(),
        Some("oob_mirror"),
        "{config:#?}"
    );
    assert_eq!(
        config["vm_config"]["code"]["local"]["filename"].as_str(),
        Some(MODULE),
        "{config:#?}"
    );
    let configuration = &config["configuration"];
    assert_eq!(
        configuration["@type"].as_str(),
        Some("type.googleapis.com/google.protobuf.StringValue"),
        "{configuration:#?}"
    );
    let json = configuration["value"]
        .as_str()
        .unwrap_or_else(|| panic!("configuration.value is not a string: {configuration:#?}"));

    let parsed = Config::parse(json.as_bytes())
        .unwrap_or_else(|e| panic!("the filter refuses the shipped configuration ({e}): {json}"));

    // Accepted is not enough: the node cluster it names must exist in the
    // same bootstrap, or every batch would fail to dispatch.
    let clusters: Vec<&str> = seq(&bootstrap["static_resources"], "clusters")
        .iter()
        .filter_map(name_of)
        .collect();
    assert!(
        clusters.contains(&parsed.node.cluster.as_str()),
        "node.cluster {:?} is not a cluster of {BOOTSTRAP}: {clusters:?}",
        parsed.node.cluster
    );
}
