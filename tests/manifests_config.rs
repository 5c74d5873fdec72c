//! Every plugin configuration the project ships is one the filter's own
//! configuration code accepts, and it sends to a node cluster that the same
//! manifests define:
//!
//! - the `pluginConfig` of each WasmPlugin and TrafficExtension template in
//!   `istio/`, with the placeholders filled in here as `make istio` fills them
//!   (test values, not the Makefile's defaults, so a hard-coded name shows);
//! - the filter configuration of each Envoy bootstrap in `envoy/`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oob_mirror::config::Config;
use serde::Deserialize;
use serde_norway::Value;

use support::paths::repo_root;

const GATEWAY_NAMESPACE: &str = "gw-ns";
const NODE_SERVICE: &str = "node-svc";
const NODE_NAMESPACE: &str = "node-ns";
const NODE_PORT: &str = "9191";
const EXTERNAL_NODE_HOST: &str = "node.test.example";

/// Every placeholder of the templates and its test value.
fn template_values() -> Vec<(&'static str, String)> {
    vec![
        ("IMAGE", "registry.example.com/oob-mirror:test".to_owned()),
        ("IMAGE_SHA256", "ab".repeat(32)),
        ("GATEWAY_NAMESPACE", GATEWAY_NAMESPACE.to_owned()),
        ("GATEWAY_NAME", "gw".to_owned()),
        ("NODE_SERVICE", NODE_SERVICE.to_owned()),
        ("NODE_NAMESPACE", NODE_NAMESPACE.to_owned()),
        ("NODE_PORT", NODE_PORT.to_owned()),
        ("EXTERNAL_NODE_HOST", EXTERNAL_NODE_HOST.to_owned()),
        (
            "SINK_IMAGE",
            "registry.example.com/oob-mirror-sink:test".to_owned(),
        ),
    ]
}

/// Templates that carry a plugin configuration, relative to `istio/`.
const PLUGIN_TEMPLATES: &[&str] = &[
    "wasmplugin.yaml",
    "wasmplugin-targetrefs.yaml",
    "trafficextension.yaml",
    "external-node/wasmplugin.yaml",
];

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|ext| ext == "yaml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn documents(text: &str, path: &Path) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

fn render(text: &str, path: &Path) -> String {
    let mut out = text.to_owned();
    for (name, value) in template_values() {
        out = out.replace(&format!("${{{name}}}"), &value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let placeholder = &rest[..rest.find('}').map_or(rest.len(), |end| end + 1)];
        panic!(
            "{}: placeholder {placeholder} has no test value",
            path.display()
        );
    }
    out
}

/// One rendered document of `istio/`, with the file it comes from.
struct Manifest {
    file: String,
    doc: Value,
}

fn istio_manifests() -> Vec<Manifest> {
    let dir = repo_root().join("istio");
    yaml_files(&dir)
        .into_iter()
        .flat_map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let file = path
                .strip_prefix(&dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            documents(&render(&text, &path), &path)
                .into_iter()
                .map(move |doc| Manifest {
                    file: file.clone(),
                    doc,
                })
        })
        .collect()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(value, |v, key| v.get(*key))
        .and_then(Value::as_str)
}

fn seq<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_sequence)
        .map_or(&[], Vec::as_slice)
}

fn number(value: &Value, key: &str) -> u64 {
    value
        .get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{key} is not a number: {value:?}"))
}

/// The clusters Istio builds for the Services and ServiceEntries of the manifests,
/// named as Istio names them: `outbound|PORT||HOST`.
fn defined_clusters(manifests: &[Manifest]) -> BTreeSet<String> {
    let mut clusters = BTreeSet::new();
    for Manifest { doc, .. } in manifests {
        let spec = &doc["spec"];
        match doc["kind"].as_str() {
            Some("Service") => {
                let name = str_at(doc, &["metadata", "name"]).unwrap();
                let namespace = str_at(doc, &["metadata", "namespace"]).unwrap();
                for port in seq(spec, "ports") {
                    clusters.insert(format!(
                        "outbound|{}||{name}.{namespace}.svc.cluster.local",
                        number(port, "port")
                    ));
                }
            }
            Some("ServiceEntry") => {
                for host in seq(spec, "hosts") {
                    for port in seq(spec, "ports") {
                        clusters.insert(format!(
                            "outbound|{}||{}",
                            number(port, "number"),
                            host.as_str().unwrap()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    clusters
}

/// Whether a DestinationRule of the manifests originates TLS to `host:port`, with its SNI.
fn originates_tls(manifests: &[Manifest], host: &str, port: u64) -> bool {
    manifests
        .iter()
        .filter(|m| m.doc["kind"].as_str() == Some("DestinationRule"))
        .filter(|m| str_at(&m.doc, &["spec", "host"]) == Some(host))
        .flat_map(|m| seq(&m.doc["spec"]["trafficPolicy"], "portLevelSettings"))
        .any(|setting| {
            setting["port"]["number"].as_u64() == Some(port)
                && str_at(setting, &["tls", "mode"]) == Some("SIMPLE")
                && str_at(setting, &["tls", "sni"]) == Some(host)
        })
}

#[test]
fn every_istio_plugin_configuration_is_accepted_and_names_a_defined_cluster() {
    let manifests = istio_manifests();
    let clusters = defined_clusters(&manifests);
    let in_mesh_host = format!("{NODE_SERVICE}.{NODE_NAMESPACE}.svc.cluster.local");

    let mut checked = Vec::new();
    for Manifest { file, doc } in &manifests {
        let plugin_config = match doc["kind"].as_str() {
            Some("WasmPlugin") => &doc["spec"]["pluginConfig"],
            Some("TrafficExtension") => &doc["spec"]["wasm"]["pluginConfig"],
            _ => continue,
        };
        assert_eq!(
            str_at(doc, &["metadata", "namespace"]),
            Some(GATEWAY_NAMESPACE),
            "{file}: the plugin belongs in the gateway's namespace"
        );
        // Istio hands pluginConfig to the filter as JSON text.
        let json = serde_json::to_string(plugin_config).unwrap();
        let config = Config::parse(json.as_bytes()).unwrap_or_else(|e| {
            panic!("{file}: the filter refuses its pluginConfig ({e}): {json}")
        });

        let (expected_cluster, expected_authority) = if file.starts_with("external-node/") {
            assert!(
                originates_tls(&manifests, EXTERNAL_NODE_HOST, 443),
                "{file}: no DestinationRule originating TLS to {EXTERNAL_NODE_HOST}:443"
            );
            (
                format!("outbound|443||{EXTERNAL_NODE_HOST}"),
                EXTERNAL_NODE_HOST.to_owned(),
            )
        } else {
            (
                format!("outbound|{NODE_PORT}||{in_mesh_host}"),
                in_mesh_host.clone(),
            )
        };
        assert_eq!(config.node.cluster, expected_cluster, "{file}");
        assert_eq!(config.node.authority, expected_authority, "{file}");
        // The cluster must be one the manifests make Istio build, or every batch
        // would fail to dispatch.
        assert!(
            clusters.contains(&config.node.cluster),
            "{file}: node.cluster {} is not defined by a Service or ServiceEntry in istio/: {clusters:?}",
            config.node.cluster
        );
        checked.push(file.as_str());
    }
    for template in PLUGIN_TEMPLATES {
        assert!(
            checked.contains(template),
            "no plugin configuration checked in istio/{template}; checked: {checked:?}"
        );
    }
}

/// Every map, at any depth, holding the oob-mirror filter's `root_id`.
fn oob_mirror_filters<'a>(value: &'a Value, found: &mut Vec<&'a Value>) {
    match value {
        Value::Mapping(map) => {
            if value.get("root_id").and_then(Value::as_str) == Some("oob_mirror") {
                found.push(value);
            }
            map.values().for_each(|v| oob_mirror_filters(v, found));
        }
        Value::Sequence(items) => items.iter().for_each(|v| oob_mirror_filters(v, found)),
        Value::Tagged(tagged) => oob_mirror_filters(&tagged.value, found),
        _ => {}
    }
}

#[test]
fn every_envoy_bootstrap_configuration_is_accepted_and_names_one_of_its_clusters() {
    let dir = repo_root().join("envoy");
    let mut checked = Vec::new();
    for path in yaml_files(&dir) {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        for bootstrap in documents(&text, &path) {
            let clusters: Vec<&str> = seq(&bootstrap["static_resources"], "clusters")
                .iter()
                .filter_map(|c| str_at(c, &["name"]))
                .collect();
            let mut filters = Vec::new();
            oob_mirror_filters(&bootstrap, &mut filters);
            for filter in filters {
                let configuration = &filter["configuration"];
                assert_eq!(
                    configuration["@type"].as_str(),
                    Some("type.googleapis.com/google.protobuf.StringValue"),
                    "{file}: {configuration:#?}"
                );
                let json = configuration["value"].as_str().unwrap_or_else(|| {
                    panic!("{file}: configuration.value is not a string: {configuration:#?}")
                });
                let config = Config::parse(json.as_bytes()).unwrap_or_else(|e| {
                    panic!("{file}: the filter refuses its configuration ({e}): {json}")
                });
                assert!(
                    clusters.contains(&config.node.cluster.as_str()),
                    "{file}: node.cluster {:?} is not one of its clusters: {clusters:?}",
                    config.node.cluster
                );
                checked.push(file.clone());
            }
        }
    }
    assert!(
        checked.iter().any(|f| f == "envoy/envoy.yaml"),
        "no oob-mirror filter configuration found in envoy/envoy.yaml; checked: {checked:?}"
    );
}
