//! Every plugin configuration the project ships is one the filter's own
//! configuration code accepts, and it sends to a node cluster that the same
//! manifests define:
//!
//! - the `pluginConfig` of each WasmPlugin and TrafficExtension template in
//!   `istio/`, with the placeholders filled in here as `make istio` fills them
//!   (test values, not the Makefile's defaults, so a hard-coded name shows);
//! - the filter configuration of each Envoy bootstrap in `envoy/`.
//!
//! In ext_proc mode (`istio/wallarm-node/`, `envoy/envoy-extproc.yaml`) that
//! cluster must also speak HTTP/2 (gRPC needs it) and originate TLS with SNI
//! and a check of the node certificate's name; a bootstrap cluster that
//! originates TLS (`envoy/envoy-tls.yaml`) must check the name too. Every
//! variable a `node.headers` value is read from must be handed to the VM
//! (`vmConfig.env`, `host_env_keys`), or the filter would refuse its
//! configuration wherever it runs.
//!
//! Last, the real Envoy validates `envoy/envoy-extproc.yaml`, with its CA file
//! path pointed at a test certificate (`envoy/envoy.yaml` is validated as it is
//! by `e2e_shipped_bootstrap.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oob_mirror::config::{Config, HeaderValue, Protocol};
use serde::Deserialize;
use serde_norway::Value;

use support::envoy::assert_validates;
use support::paths::{repo_root, TempDir};

const GATEWAY_NAMESPACE: &str = "gw-ns";
const NODE_SERVICE: &str = "node-svc";
const NODE_NAMESPACE: &str = "node-ns";
const NODE_PORT: &str = "9191";
const EXTERNAL_NODE_HOST: &str = "node.test.example";
const WALLARM_NODE_HOST: &str = "wallarm.test.example";
const WALLARM_NODE_PORT: u64 = 15080;

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
        ("WALLARM_NODE_HOST", WALLARM_NODE_HOST.to_owned()),
        ("WALLARM_NODE_PORT", WALLARM_NODE_PORT.to_string()),
        (
            "NODE_IMAGE",
            "registry.example.com/oob-mirror-node:test".to_owned(),
        ),
        (
            "NODE_STORE_URL",
            "postgres://oob_mirror@pg.node-ns.svc.cluster.local:5432/oob_mirror".to_owned(),
        ),
    ]
}

/// Templates that carry a plugin configuration, relative to `istio/`.
const PLUGIN_TEMPLATES: &[&str] = &[
    "wasmplugin.yaml",
    "wasmplugin-targetrefs.yaml",
    "trafficextension.yaml",
    "external-node/wasmplugin.yaml",
    "wallarm-node/wasmplugin.yaml",
    "node/wasmplugin.yaml",
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

/// Whether a DestinationRule of the manifests originates TLS to `host:port`, with its SNI and
/// the node's certificate checked for that name.
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
                && seq(&setting["tls"], "subjectAltNames")
                    .iter()
                    .any(|name| name.as_str() == Some(host))
        })
}

/// The VM environment variables `node.headers` read their values from.
fn value_env_vars(config: &Config) -> Vec<&str> {
    config
        .node
        .headers
        .iter()
        .filter_map(|h| match &h.value {
            HeaderValue::Env(var) => Some(var.as_str()),
            HeaderValue::Inline(_) => None,
        })
        .collect()
}

/// Whether Istio builds the cluster for `host:port` as HTTP/2, which a gRPC stream needs: the
/// ServiceEntry port's protocol is one Istio speaks HTTP/2 to (GRPC, HTTP2), or a
/// DestinationRule upgrades the host's HTTP/1.1 to HTTP/2.
fn speaks_http2(manifests: &[Manifest], host: &str, port: u64) -> bool {
    let port_protocol = manifests
        .iter()
        .filter(|m| m.doc["kind"].as_str() == Some("ServiceEntry"))
        .filter(|m| {
            seq(&m.doc["spec"], "hosts")
                .iter()
                .any(|h| h.as_str() == Some(host))
        })
        .flat_map(|m| seq(&m.doc["spec"], "ports"))
        .any(|p| {
            p["number"].as_u64() == Some(port)
                && matches!(p["protocol"].as_str(), Some("GRPC" | "HTTP2"))
        });
    let upgraded = manifests
        .iter()
        .filter(|m| m.doc["kind"].as_str() == Some("DestinationRule"))
        .filter(|m| str_at(&m.doc, &["spec", "host"]) == Some(host))
        .any(|m| {
            let policy = &m.doc["spec"]["trafficPolicy"];
            let upgrades = |p: &Value| {
                str_at(p, &["connectionPool", "http", "h2UpgradePolicy"]) == Some("UPGRADE")
            };
            upgrades(policy)
                || seq(policy, "portLevelSettings")
                    .iter()
                    .any(|s| s["port"]["number"].as_u64() == Some(port) && upgrades(s))
        });
    port_protocol || upgraded
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
        let vm_config = match doc["kind"].as_str() {
            Some("TrafficExtension") => &doc["spec"]["wasm"]["vmConfig"],
            _ => &doc["spec"]["vmConfig"],
        };
        let vm_env: Vec<&str> = seq(vm_config, "env")
            .iter()
            .filter_map(|e| str_at(e, &["name"]))
            .collect();
        for var in value_env_vars(&config) {
            assert!(
                vm_env.contains(&var),
                "{file}: node.headers read {var} from the VM environment, which vmConfig.env \
                 does not pass: {vm_env:?}"
            );
        }

        if file.starts_with("wallarm-node/") {
            // A Wallarm Native Node in envoy-external-filter mode: gRPC ext_proc, over TLS.
            assert_eq!(config.node.protocol, Protocol::ExtProc, "{file}");
            assert_eq!(
                config.node.cluster,
                format!("outbound|{WALLARM_NODE_PORT}||{WALLARM_NODE_HOST}"),
                "{file}"
            );
            assert!(
                originates_tls(&manifests, WALLARM_NODE_HOST, WALLARM_NODE_PORT),
                "{file}: no DestinationRule originating TLS to \
                 {WALLARM_NODE_HOST}:{WALLARM_NODE_PORT} with SNI and SAN check"
            );
            assert!(
                speaks_http2(&manifests, WALLARM_NODE_HOST, WALLARM_NODE_PORT),
                "{file}: the node's cluster is not HTTP/2 (a ServiceEntry port of protocol \
                 GRPC, or h2UpgradePolicy: UPGRADE), so no gRPC stream could use it"
            );
            assert_eq!(
                config.ext_proc.request_attributes,
                ["request.id", "request.time", "source.address"],
                "{file}: the attributes Wallarm's ext_proc setup sends"
            );
        } else {
            let (expected_cluster, expected_authority) = if file.starts_with("external-node/") {
                assert!(
                    originates_tls(&manifests, EXTERNAL_NODE_HOST, 443),
                    "{file}: no DestinationRule originating TLS to {EXTERNAL_NODE_HOST}:443 \
                     with SNI and SAN check"
                );
                // A node reached across networks authenticates its senders.
                assert!(
                    !value_env_vars(&config).is_empty(),
                    "{file}: no node.headers value from the VM environment"
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
            assert_eq!(config.node.protocol, Protocol::Batch, "{file}");
            assert_eq!(config.node.cluster, expected_cluster, "{file}");
            assert_eq!(config.node.authority, expected_authority, "{file}");
        }
        // The cluster must be one the manifests make Istio build, or every batch
        // would fail to dispatch (every ext_proc stream be refused).
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
                let environment = &filter["vm_config"]["environment_variables"];
                for var in value_env_vars(&config) {
                    let passed = seq(environment, "host_env_keys")
                        .iter()
                        .any(|k| k.as_str() == Some(var))
                        || environment["key_values"].get(var).is_some();
                    assert!(
                        passed,
                        "{file}: node.headers read {var} from the VM environment, which \
                         vm_config.environment_variables does not pass: {environment:?}"
                    );
                }
                let cluster = seq(&bootstrap["static_resources"], "clusters")
                    .iter()
                    .find(|c| str_at(c, &["name"]) == Some(config.node.cluster.as_str()))
                    .unwrap();
                if config.node.protocol == Protocol::ExtProc {
                    check_grpc_tls_cluster(&file, cluster);
                } else if !cluster["transport_socket"].is_null() {
                    check_tls_cluster(&file, cluster);
                }
                checked.push(file.clone());
            }
        }
    }
    for bootstrap in ["envoy/envoy.yaml", EXTPROC_BOOTSTRAP, TLS_BOOTSTRAP] {
        assert!(
            checked.iter().any(|f| f == bootstrap),
            "no oob-mirror filter configuration found in {bootstrap}; checked: {checked:?}"
        );
    }
}

/// The bootstrap that shows TLS and authentication to the node, relative to the repository root.
const TLS_BOOTSTRAP: &str = "envoy/envoy-tls.yaml";

/// An Envoy cluster fit for the filter's gRPC streams to a node that requires TLS: HTTP/2, h2
/// by ALPN, and TLS as [`check_tls_cluster`] wants it.
fn check_grpc_tls_cluster(file: &str, cluster: &Value) {
    let name = str_at(cluster, &["name"]).unwrap();
    let options = &cluster["typed_extension_protocol_options"]
        ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        options["explicit_http_config"]["http2_protocol_options"].is_mapping(),
        "{file}: cluster {name} is not explicitly HTTP/2, which gRPC needs: {cluster:#?}"
    );
    let tls = check_tls_cluster(file, cluster);
    assert!(
        seq(&tls["common_tls_context"], "alpn_protocols")
            .iter()
            .any(|p| p.as_str() == Some("h2")),
        "{file}: cluster {name} does not offer h2 by ALPN: {tls:#?}"
    );
}

/// A cluster that originates TLS with SNI, a trusted CA and the SNI name checked in the node
/// certificate's DNS SANs, to an endpoint of that name; its `UpstreamTlsContext`.
fn check_tls_cluster<'a>(file: &str, cluster: &'a Value) -> &'a Value {
    let name = str_at(cluster, &["name"]).unwrap();
    let tls = &cluster["transport_socket"]["typed_config"];
    assert_eq!(
        tls["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"),
        "{file}: cluster {name} does not originate TLS: {cluster:#?}"
    );
    let sni = str_at(tls, &["sni"])
        .unwrap_or_else(|| panic!("{file}: cluster {name} sends no SNI: {tls:#?}"));
    let validation = &tls["common_tls_context"]["validation_context"];
    assert!(
        str_at(validation, &["trusted_ca", "filename"]).is_some(),
        "{file}: cluster {name} trusts no CA file: {tls:#?}"
    );
    assert!(
        seq(validation, "match_typed_subject_alt_names")
            .iter()
            .any(|m| str_at(m, &["san_type"]) == Some("DNS")
                && str_at(m, &["matcher", "exact"]) == Some(sni)),
        "{file}: cluster {name} does not check the certificate's DNS SAN {sni}: {tls:#?}"
    );
    // The endpoint is the host the certificate is checked for.
    let addresses: Vec<&str> = seq(&cluster["load_assignment"], "endpoints")
        .iter()
        .flat_map(|e| seq(e, "lb_endpoints"))
        .filter_map(|e| str_at(e, &["endpoint", "address", "socket_address", "address"]))
        .collect();
    assert_eq!(addresses, [sni], "{file}: cluster {name}'s endpoints");
    tls
}

/// The ext_proc bootstrap, relative to the repository root.
const EXTPROC_BOOTSTRAP: &str = "envoy/envoy-extproc.yaml";
/// The CA file the ext_proc bootstrap trusts: an operator's path, absent here.
const EXTPROC_CA_PATH: &str = "/etc/wallarm/ca.pem";
/// A self-signed CA certificate (its key was discarded), only so Envoy has a CA file to load.
const TEST_CA_PEM: &str = "\
-----BEGIN CERTIFICATE-----
MIIBtjCCAVugAwIBAgIUT+50p3kBNFknIRmBvwsy1I0nmwswCgYIKoZIzj0EAwIw
LzEtMCsGA1UEAwwkb29iLW1pcnJvciB0ZXN0IENBICh2YWxpZGF0aW9uIG9ubHkp
MCAXDTI2MTIwMTE5MDM1N1oYDzIxMjYxMTA3MTkwMzU3WjAvMS0wKwYDVQQDDCRv
b2ItbWlycm9yIHRlc3QgQ0EgKHZhbGlkYXRpb24gb25seSkwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAATdGU1FeGy89iglMeck5ORQS6UMFUAQaFWEBMMifrtU/d+x
a7o8y+Kg5KhiAO5y28Z94dpRanFXNm2o9ztugZtWo1MwUTAdBgNVHQ4EFgQUzyut
oLNX/A4WXafRpnUOLkW64UMwHwYDVR0jBBgwFoAUzyutoLNX/A4WXafRpnUOLkW6
4UMwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBGAiEAsZY/ZVs3B2Lx
NFNG4x0j9jW5YdxoZuV41TYX9VdYWhsCIQCI7uY/W/RgyBC+vhBcbEZB2AebRwMR
HSDc5HrF3oBMmw==
-----END CERTIFICATE-----
";

/// The real Envoy accepts `envoy/envoy-extproc.yaml` as shipped, but for its CA file path, which
/// points at a test certificate here (Envoy refuses a missing CA file). Run from the repository
/// root, where the bootstrap's relative module path `dist/oob_mirror.wasm` points.
#[test]
fn envoy_validates_the_extproc_bootstrap() {
    let root = repo_root();
    let module = root.join("dist/oob_mirror.wasm");
    assert!(
        module.is_file(),
        "{} is missing: build it with `make wasm` (the bootstrap loads it from there)",
        module.display()
    );
    let text = std::fs::read_to_string(root.join(EXTPROC_BOOTSTRAP)).unwrap();
    assert_eq!(
        text.matches(EXTPROC_CA_PATH).count(),
        1,
        "{EXTPROC_BOOTSTRAP}: expected the CA path {EXTPROC_CA_PATH} once"
    );
    let dir = TempDir::new("extproc-bootstrap");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, TEST_CA_PEM).unwrap();
    let bootstrap = dir.path().join("envoy-extproc.yaml");
    std::fs::write(
        &bootstrap,
        text.replace(EXTPROC_CA_PATH, ca.to_str().unwrap()),
    )
    .unwrap();

    // `--mode validate` builds the clusters (loading the CA file), loads the module and runs
    // its configuration, binds no port and exits on its own.
    assert_validates(&root, &bootstrap);
}

/// `istio/node/`: the node replicas run as the product needs them, and the plugin beside them
/// shards its batches onto a hash-based node cluster.
#[test]
fn the_node_replicas_share_a_store_and_the_gateway_shards_onto_them() {
    let manifests = istio_manifests();
    let in_node = |kind: &str| -> Vec<&Value> {
        manifests
            .iter()
            .filter(|m| m.file.starts_with("node/") && m.doc["kind"].as_str() == Some(kind))
            .map(|m| &m.doc)
            .collect()
    };
    let deployments = in_node("Deployment");
    assert_eq!(deployments.len(), 1, "one node Deployment");
    let d = deployments[0];
    assert_eq!(number(&d["spec"], "replicas"), 3);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let containers = seq(pod, "containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(
        str_at(c, &["image"]),
        Some("registry.example.com/oob-mirror-node:test")
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            str_at(c, &[probe, "httpGet", "path"]),
            Some("/healthz"),
            "{probe}"
        );
    }
    let args: Vec<&str> = seq(c, "args").iter().filter_map(Value::as_str).collect();
    let store = args
        .iter()
        .position(|a| *a == "--store")
        .and_then(|i| args.get(i + 1))
        .copied();
    assert!(
        store.is_some_and(|s| s.starts_with("postgres://")),
        "the replicas share a PostgreSQL store: {args:?}"
    );
    // Every secret the pod reads is in the Secret of the folder, under that key.
    let secrets = in_node("Secret");
    assert_eq!(secrets.len(), 1);
    let secret = secrets[0];
    let mut env_names = Vec::new();
    for e in seq(c, "env") {
        let name = str_at(e, &["name"]).unwrap();
        env_names.push(name);
        let key = str_at(e, &["valueFrom", "secretKeyRef", "key"]).unwrap();
        assert_eq!(
            str_at(e, &["valueFrom", "secretKeyRef", "name"]),
            str_at(secret, &["metadata", "name"]),
            "{name}"
        );
        assert!(secret["stringData"][key].is_string(), "{name}: key {key}");
    }
    assert_eq!(
        env_names,
        ["OOB_MIRROR_NODE_STORE_PASSWORD", "OOB_MIRROR_REDACT_KEY"]
    );
    let hpa = in_node("HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    assert_eq!(
        str_at(hpa[0], &["spec", "scaleTargetRef", "name"]),
        Some(NODE_SERVICE)
    );
    assert_eq!(number(&hpa[0]["spec"], "minReplicas"), 3);
    assert_eq!(in_node("PodDisruptionBudget").len(), 1);
    assert_eq!(in_node("Service").len(), 1);

    let plugins = in_node("WasmPlugin");
    assert_eq!(plugins.len(), 1);
    let json = serde_json::to_string(&plugins[0]["spec"]["pluginConfig"]).unwrap();
    let config = Config::parse(json.as_bytes()).unwrap();
    assert_eq!(config.node.shards, 16);
    let host = format!("{NODE_SERVICE}.{NODE_NAMESPACE}.svc.cluster.local");
    let rules = in_node("DestinationRule");
    assert_eq!(rules.len(), 1);
    let rule = rules[0];
    assert_eq!(str_at(rule, &["spec", "host"]), Some(host.as_str()));
    assert_eq!(
        str_at(rule, &["metadata", "namespace"]),
        Some(GATEWAY_NAMESPACE),
        "the rule applies to the gateway's cluster"
    );
    // Any consistentHash makes Istio build a RING_HASH cluster; Envoy hashes a wasm call on
    // its :authority (context.cc), which carries the shard.
    assert!(
        rule["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"].is_mapping(),
        "no consistent hashing on the node cluster"
    );
}
