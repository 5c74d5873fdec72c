//! Plugin configuration: read from JSON field by field (unknown and duplicate fields refused,
//! each value's type checked), then checked as a whole, so that a bad configuration is refused
//! with one message naming the field.

use crate::batch::MAX_SHARDS;
use crate::json::{self, Json};
use std::fmt;

/// Smallest batch budget that still fits one record with empty bodies and a few headers.
pub const MIN_BATCH_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub node: NodeConfig,
    pub capture: CaptureConfig,
    pub batch: BatchConfig,
    pub ext_proc: ExtProcConfig,
    pub redact: RedactConfig,
    pub scope: ScopeConfig,
    pub sampling: SamplingConfig,
}

/// Which exchanges are mirrored at all (src/select.rs); empty lists select everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeConfig {
    /// Paths not mirrored: an entry ending in `/` excludes everything under it, any other
    /// entry exactly that path; the query string is ignored.
    pub exclude_paths: Vec<String>,
    /// Hosts mirrored (the `:authority` without its port, any case; `*.example.com` matches
    /// its subdomains); empty: every host.
    pub include_hosts: Vec<String>,
    /// Methods mirrored (exact); empty: every method.
    pub methods: Vec<String>,
}

/// How many of the exchanges in scope are mirrored (src/select.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplingConfig {
    /// The share of exchanges mirrored, in millionths (`rate` 0.25 is 250000).
    pub rate_ppm: u32,
    /// At most this many exchanges a second per worker; `None`: no ceiling.
    pub max_per_second: Option<u64>,
    /// Shed whole exchanges as the batch queue fills, before records would be dropped one by
    /// one (which leaves halves of exchanges at the node).
    pub shed: bool,
}

/// `sampling.rate` 1: every exchange.
pub const RATE_ALL: u32 = 1_000_000;

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            rate_ppm: RATE_ALL,
            max_per_second: None,
            shed: true,
        }
    }
}

/// Where values of redacted names become keyed markers (src/redact.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RedactMode {
    /// Credential-shaped values (and `gateway_fields`) become markers here; the other values
    /// go to the node in clear, marked, for it to analyse and then seal with the same key.
    #[default]
    Node,
    /// Every value of a redacted name becomes a marker here (a node that does not seal).
    Gateway,
}

/// What is replaced by a keyed marker before a record leaves the worker (src/redact.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactConfig {
    pub enabled: bool,
    pub mode: RedactMode,
    /// Body fields and query parameters whose values are markers here in every mode: a
    /// password's shape says nothing about it.
    pub gateway_fields: Vec<String>,
    /// Header names (any case), the defaults plus those configured.
    pub headers: Vec<String>,
    pub query_params: Vec<String>,
    /// Keys of JSON and form body fields.
    pub body_fields: Vec<String>,
    /// The VM environment variable holding the marker key.
    pub key_env: String,
}

pub const DEFAULT_REDACT_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
];

/// Default secret body fields, and query parameters.
pub const DEFAULT_REDACT_FIELDS: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "client_secret",
    "api_key",
];

/// Default `gateway_fields`.
pub const DEFAULT_GATEWAY_FIELDS: [&str; 2] = ["password", "passwd"];

impl Default for RedactConfig {
    fn default() -> Self {
        RedactConfig {
            enabled: true,
            mode: RedactMode::Node,
            gateway_fields: DEFAULT_GATEWAY_FIELDS.map(str::to_owned).to_vec(),
            headers: DEFAULT_REDACT_HEADERS.map(str::to_owned).to_vec(),
            query_params: DEFAULT_REDACT_FIELDS.map(str::to_owned).to_vec(),
            body_fields: DEFAULT_REDACT_FIELDS.map(str::to_owned).to_vec(),
            key_env: "OOB_MIRROR_REDACT_KEY".to_owned(),
        }
    }
}

/// How records reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// msgpack batches over HTTP (docs/wire-format.md).
    #[default]
    Batch,
    /// One `envoy.service.ext_proc.v3.ExternalProcessor/Process` gRPC stream per exchange.
    ExtProc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    pub protocol: Protocol,
    /// Added to every batch request and to every ext_proc stream's initial metadata (node
    /// authentication).
    pub headers: Vec<NodeHeader>,
    /// Open batches per worker, by a hash of the exchange id (src/batch.rs): both records of
    /// an exchange go in batches of one shard, and a batch of shard N (when there are more
    /// than one) is sent with `:authority shard-N.{authority}` and `x-oob-mirror-shard: N`,
    /// which a RING_HASH or MAGLEV node cluster routes by. 1: one batch, as before.
    pub shards: u32,
}

/// A header for the node; its value is a secret, so `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeHeader {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Inline(String),
    /// The VM environment variable holding the value (a Kubernetes Secret through WasmPlugin
    /// `vmConfig.env`), read when the configuration is applied.
    Env(String),
}

impl fmt::Debug for NodeHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match &self.value {
            HeaderValue::Inline(_) => "(inline, hidden)".to_owned(),
            HeaderValue::Env(name) => format!("(from ${name})"),
        };
        write!(f, "{}: {value}", self.name)
    }
}

/// The ext_proc protocol's settings (used when `node.protocol` is `ext_proc`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtProcConfig {
    /// Envoy attribute names sent with the request headers, as Envoy's ext_proc
    /// `request_attributes`.
    pub request_attributes: Vec<String>,
    /// Envoy attribute names sent with the response headers.
    pub response_attributes: Vec<String>,
    /// gRPC streams a worker keeps open at once; exchanges beyond it are dropped and counted.
    pub max_streams: u64,
}

impl Default for ExtProcConfig {
    /// Wallarm's documented ext_proc settings.
    fn default() -> Self {
        ExtProcConfig {
            request_attributes: ["request.id", "request.time", "source.address"]
                .map(str::to_owned)
                .to_vec(),
            response_attributes: Vec::new(),
            max_streams: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    pub request_body_max: u64,
    pub response_body_max: u64,
    /// Body bytes all streams of one worker may hold while their records are not yet queued.
    pub max_buffered_bytes: u64,
    /// Bodies of these media types are counted (true size) but not copied: an entry ending in
    /// `/` is a whole top-level type (`image/`), any other an exact type (any case).
    pub skip_body_content_types: Vec<String>,
}

/// Media that an API analysis does not read: images, audio, video, fonts, archives.
pub const DEFAULT_SKIP_BODY_CONTENT_TYPES: [&str; 15] = [
    "image/",
    "audio/",
    "video/",
    "font/",
    "application/font-woff",
    "application/vnd.ms-fontobject",
    "application/zip",
    "application/gzip",
    "application/x-gzip",
    "application/x-tar",
    "application/x-bzip2",
    "application/x-xz",
    "application/x-7z-compressed",
    "application/vnd.rar",
    "application/zstd",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_records: u64,
    pub max_bytes: u64,
    pub flush_ms: u64,
    pub max_queue_bytes: u64,
    pub max_inflight: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            request_body_max: 64 * 1024,
            response_body_max: 64 * 1024,
            max_buffered_bytes: 16 * 1024 * 1024,
            skip_body_content_types: DEFAULT_SKIP_BODY_CONTENT_TYPES.map(str::to_owned).to_vec(),
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 64,
            max_bytes: 1024 * 1024,
            flush_ms: 50,
            max_queue_bytes: 8 * 1024 * 1024,
            max_inflight: 4,
        }
    }
}

/// Why a configuration was refused: the dotted field path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    /// One line whatever the input: control characters (a key can hold `\n`) are escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}: {}", self.field, self.reason);
        for c in text.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// One JSON object of the configuration: its dotted path and its fields, every key known and
/// none repeated.
struct Section<'a> {
    path: String,
    fields: &'a [(String, Json)],
}

impl<'a> Section<'a> {
    fn new(path: String, value: &'a Json, known: &[&str]) -> Result<Section<'a>, ConfigError> {
        let Json::Obj(fields) = value else {
            let field = if path.is_empty() {
                "configuration"
            } else {
                &path
            };
            return Err(refuse(
                field,
                format!("expected an object, found {}", value.kind()),
            ));
        };
        let section = Section { path, fields };
        for (i, (key, _)) in fields.iter().enumerate() {
            if !known.contains(&key.as_str()) {
                let expected = known.join("`, `");
                let reason = format!("unknown field `{key}`, expected one of `{expected}`");
                return Err(refuse(&section.field(key), reason));
            }
            if fields.iter().take(i).any(|(k, _)| k == key) {
                return Err(refuse(
                    &section.field(key),
                    format!("duplicate field `{key}`"),
                ));
            }
        }
        Ok(section)
    }

    fn field(&self, name: &str) -> String {
        // An empty key still has to read as a field in the one log line.
        let name = if name.is_empty() { "\"\"" } else { name };
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn get(&self, name: &str) -> Option<&'a Json> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn wrong(&self, name: &str, expected: &str, found: &Json) -> ConfigError {
        refuse(
            &self.field(name),
            format!("expected {expected}, found {}", found.kind()),
        )
    }

    fn section(&self, name: &str, known: &[&str]) -> Result<Option<Section<'a>>, ConfigError> {
        self.get(name)
            .map(|value| Section::new(self.field(name), value, known))
            .transpose()
    }

    fn string(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(Json::Str(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.wrong(name, "a string", other)),
        }
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Json::Num(text)) => text.parse().map_err(|_| {
                refuse(
                    &self.field(name),
                    format!("expected an integer from 0 to {}, found {text}", u64::MAX),
                )
            }),
            Some(other) => Err(self.wrong(name, "a number", other)),
        }
    }

    /// A list of objects, each read as a section named `name[i]`.
    fn objects(&self, name: &str, known: &[&str]) -> Result<Vec<Section<'a>>, ConfigError> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(Json::Arr(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| Section::new(format!("{}[{i}]", self.field(name)), item, known))
                .collect(),
            Some(other) => Err(self.wrong(name, "a list of objects", other)),
        }
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Json::Bool(on)) => Ok(*on),
            Some(other) => Err(self.wrong(name, "true or false", other)),
        }
    }

    /// A decimal from 0 to 1 with at most six places, in millionths; read without floating
    /// point, so `0.2` is exactly 200000.
    fn fraction(&self, name: &str, default: u32) -> Result<u32, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Json::Num(text)) => millionths(text).ok_or_else(|| {
                refuse(
                    &self.field(name),
                    format!("expected a decimal from 0 to 1 with at most 6 places, found {text}"),
                )
            }),
            Some(other) => Err(self.wrong(name, "a number", other)),
        }
    }

    fn list(&self, name: &str, default: Vec<String>) -> Result<Vec<String>, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(Json::Arr(items)) => items
                .iter()
                .map(|item| match item {
                    Json::Str(text) => Ok(text.clone()),
                    other => Err(self.wrong(name, "a list of strings", other)),
                })
                .collect(),
            Some(other) => Err(self.wrong(name, "a list of strings", other)),
        }
    }
}

/// `0`, `1`, `0.25`, `1.000`: the value in millionths, if it is from 0 to 1 with at most six
/// decimal places.
fn millionths(text: &str) -> Option<u32> {
    let (whole, places) = text.split_once('.').unwrap_or((text, ""));
    if places.len() > 6
        || (places.is_empty() && text.contains('.'))
        || !places.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: u32 = match whole {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut fraction = 0u32;
    for digit in places.bytes().chain(std::iter::repeat(b'0')).take(6) {
        fraction = fraction * 10 + u32::from(digit - b'0');
    }
    let value = whole * RATE_ALL + fraction;
    (value <= RATE_ALL).then_some(value)
}

fn refuse(field: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.to_owned(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses and checks the plugin configuration bytes (JSON).
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(refuse(
                "node.cluster",
                "required (the configuration is empty)",
            ));
        }
        let json = json::parse(bytes).map_err(|why| refuse("configuration", why))?;
        let config = Config::read(&json)?;
        config.check()?;
        Ok(config)
    }

    /// The fields as written, or their defaults (the README's configuration table).
    fn read(json: &Json) -> Result<Config, ConfigError> {
        let root = Section::new(
            String::new(),
            json,
            &[
                "node", "capture", "batch", "ext_proc", "redact", "scope", "sampling",
            ],
        )?;
        let known = [
            "cluster",
            "authority",
            "path",
            "timeout_ms",
            "protocol",
            "headers",
            "shards",
        ];
        let node = root
            .section("node", &known)?
            .ok_or_else(|| refuse("node", "missing field `node`"))?;
        let protocol = match node.get("protocol") {
            None => Protocol::Batch,
            Some(Json::Str(name)) if name == "batch" => Protocol::Batch,
            Some(Json::Str(name)) if name == "ext_proc" => Protocol::ExtProc,
            Some(Json::Str(name)) => {
                let reason = format!("unknown variant `{name}`, expected `batch` or `ext_proc`");
                return Err(refuse("node.protocol", reason));
            }
            Some(other) => return Err(node.wrong("protocol", "a string", other)),
        };
        let node = NodeConfig {
            cluster: node
                .string("cluster")?
                .ok_or_else(|| refuse("node.cluster", "missing field `cluster`"))?,
            authority: node
                .string("authority")?
                .unwrap_or_else(|| "oob-mirror".to_owned()),
            path: node
                .string("path")?
                .unwrap_or_else(|| "/v1/records".to_owned()),
            timeout_ms: node.number("timeout_ms", 1000)?,
            protocol,
            headers: node_headers(&node)?,
            shards: {
                let shards = node.number("shards", 1)?;
                if !(1..=u64::from(MAX_SHARDS)).contains(&shards) {
                    return Err(refuse(
                        "node.shards",
                        format!("must be from 1 to {MAX_SHARDS}, found {shards}"),
                    ));
                }
                u32::try_from(shards).unwrap_or(1)
            },
        };

        let (c, b, e) = (
            CaptureConfig::default(),
            BatchConfig::default(),
            ExtProcConfig::default(),
        );
        let known = [
            "request_body_max",
            "response_body_max",
            "max_buffered_bytes",
            "skip_body_content_types",
        ];
        // The content-type list replaces the default (mirroring images is a choice, not a leak).
        let capture = match root.section("capture", &known)? {
            None => c,
            Some(s) => CaptureConfig {
                request_body_max: s.number("request_body_max", c.request_body_max)?,
                response_body_max: s.number("response_body_max", c.response_body_max)?,
                max_buffered_bytes: s.number("max_buffered_bytes", c.max_buffered_bytes)?,
                skip_body_content_types: s
                    .list("skip_body_content_types", c.skip_body_content_types)?,
            },
        };
        let known = [
            "max_records",
            "max_bytes",
            "flush_ms",
            "max_queue_bytes",
            "max_inflight",
        ];
        let batch = match root.section("batch", &known)? {
            None => b,
            Some(s) => BatchConfig {
                max_records: s.number("max_records", b.max_records)?,
                max_bytes: s.number("max_bytes", b.max_bytes)?,
                flush_ms: s.number("flush_ms", b.flush_ms)?,
                max_queue_bytes: s.number("max_queue_bytes", b.max_queue_bytes)?,
                max_inflight: s.number("max_inflight", b.max_inflight)?,
            },
        };
        let known = ["request_attributes", "response_attributes", "max_streams"];
        let ext_proc = match root.section("ext_proc", &known)? {
            None => e,
            Some(s) => ExtProcConfig {
                request_attributes: s.list("request_attributes", e.request_attributes)?,
                response_attributes: s.list("response_attributes", e.response_attributes)?,
                max_streams: s.number("max_streams", e.max_streams)?,
            },
        };
        let r = RedactConfig::default();
        let known = [
            "enabled",
            "mode",
            "headers",
            "query_params",
            "body_fields",
            "gateway_fields",
            "key_env",
        ];
        // Lists add to the defaults: a configuration cannot drop a default secret by naming
        // another one; `enabled: false` turns redaction off.
        let redact = match root.section("redact", &known)? {
            None => r,
            Some(s) => RedactConfig {
                enabled: s.boolean("enabled", true)?,
                mode: match s.get("mode") {
                    None => r.mode,
                    Some(Json::Str(name)) if name == "node" => RedactMode::Node,
                    Some(Json::Str(name)) if name == "gateway" => RedactMode::Gateway,
                    Some(Json::Str(name)) => {
                        let reason =
                            format!("unknown variant `{name}`, expected `node` or `gateway`");
                        return Err(refuse("redact.mode", reason));
                    }
                    Some(other) => return Err(s.wrong("mode", "a string", other)),
                },
                gateway_fields: [r.gateway_fields, s.list("gateway_fields", Vec::new())?].concat(),
                headers: [r.headers, s.list("headers", Vec::new())?].concat(),
                query_params: [r.query_params, s.list("query_params", Vec::new())?].concat(),
                body_fields: [r.body_fields, s.list("body_fields", Vec::new())?].concat(),
                key_env: s.string("key_env")?.unwrap_or(r.key_env),
            },
        };
        let known = ["exclude_paths", "include_hosts", "methods"];
        let scope = match root.section("scope", &known)? {
            None => ScopeConfig::default(),
            Some(s) => ScopeConfig {
                exclude_paths: s.list("exclude_paths", Vec::new())?,
                include_hosts: s.list("include_hosts", Vec::new())?,
                methods: s.list("methods", Vec::new())?,
            },
        };
        let d = SamplingConfig::default();
        let sampling = match root.section("sampling", &["rate", "max_per_second", "shed"])? {
            None => d,
            Some(s) => SamplingConfig {
                rate_ppm: s.fraction("rate", d.rate_ppm)?,
                max_per_second: match s.get("max_per_second") {
                    None => None,
                    Some(_) => Some(s.number("max_per_second", 0)?),
                },
                shed: s.boolean("shed", d.shed)?,
            },
        };
        Ok(Config {
            node,
            capture,
            batch,
            ext_proc,
            redact,
            scope,
            sampling,
        })
    }

    fn check(&self) -> Result<(), ConfigError> {
        let node = &self.node;
        if node.cluster.trim().is_empty() {
            return Err(refuse("node.cluster", "must not be empty"));
        }
        if node.authority.trim().is_empty() {
            return Err(refuse("node.authority", "must not be empty"));
        }
        if !node.path.starts_with('/') {
            return Err(refuse("node.path", "must start with '/'"));
        }
        positive("node.timeout_ms", node.timeout_ms)?;
        at_most("node.timeout_ms", node.timeout_ms, u64::from(u32::MAX))?;
        let batch = &self.batch;
        positive("batch.max_records", batch.max_records)?;
        positive("batch.flush_ms", batch.flush_ms)?;
        at_most("batch.flush_ms", batch.flush_ms, 60_000)?;
        positive("batch.max_inflight", batch.max_inflight)?;
        at_most("batch.max_inflight", batch.max_inflight, 1024)?;
        if batch.max_bytes < MIN_BATCH_BYTES {
            return Err(refuse(
                "batch.max_bytes",
                format!("must be at least {MIN_BATCH_BYTES} (one record's minimum)"),
            ));
        }
        if batch.max_queue_bytes < batch.max_bytes {
            return Err(refuse(
                "batch.max_queue_bytes",
                "must be at least batch.max_bytes",
            ));
        }
        // Bodies are held in wasm memory per stream; a cap beyond this is a typo, not a wish.
        at_most(
            "capture.request_body_max",
            self.capture.request_body_max,
            64 << 20,
        )?;
        at_most(
            "capture.response_body_max",
            self.capture.response_body_max,
            64 << 20,
        )?;
        self.check_ext_proc()?;
        self.check_selection()
    }

    fn check_selection(&self) -> Result<(), ConfigError> {
        let scope = &self.scope;
        for path in &scope.exclude_paths {
            if !path.starts_with('/') || path.contains('?') {
                return Err(refuse(
                    "scope.exclude_paths",
                    format!("{path:?}: a path starts with '/' and has no query"),
                ));
            }
        }
        for host in &scope.include_hosts {
            let name = host.strip_prefix("*.").unwrap_or(host);
            if name.is_empty() || name.contains(['*', ':', '/']) {
                return Err(refuse(
                    "scope.include_hosts",
                    format!("{host:?}: a host name, or `*.` and a domain, without port"),
                ));
            }
        }
        for method in &scope.methods {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(refuse(
                    "scope.methods",
                    format!("{method:?}: a method is letters, such as GET"),
                ));
            }
        }
        for media in &self.capture.skip_body_content_types {
            let (top, sub) = media.split_once('/').unwrap_or(("", ""));
            if top.is_empty() || sub.contains('/') || media.contains([';', ' ']) {
                return Err(refuse(
                    "capture.skip_body_content_types",
                    format!("{media:?}: a media type such as image/png, or a type and '/'"),
                ));
            }
        }
        if self.sampling.max_per_second == Some(0) {
            return Err(refuse(
                "sampling.max_per_second",
                "must be greater than 0 (to mirror nothing, set sampling.rate to 0)",
            ));
        }
        for (i, header) in self.node.headers.iter().enumerate() {
            let field = format!("node.headers[{i}].name");
            let name = &header.name;
            let token = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
            if name.is_empty() || !name.bytes().all(token) {
                return Err(refuse(&field, "lowercase letters, digits and '-'"));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(refuse(&field, format!("`{name}` is set by oob-mirror")));
            }
            match &header.value {
                HeaderValue::Env(var) if var.is_empty() => {
                    return Err(refuse(
                        &format!("node.headers[{i}].value_env"),
                        "must not be empty",
                    ));
                }
                // Never echoed: the value is a secret.
                HeaderValue::Inline(value) if !valid_header_value(value) => {
                    return Err(refuse(
                        &format!("node.headers[{i}].value"),
                        "must not be empty nor hold control characters",
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_ext_proc(&self) -> Result<(), ConfigError> {
        let ext_proc = &self.ext_proc;
        positive("ext_proc.max_streams", ext_proc.max_streams)?;
        at_most("ext_proc.max_streams", ext_proc.max_streams, 65_536)?;
        let redact = &self.redact;
        for (field, names) in [
            ("redact.headers", &redact.headers),
            ("redact.query_params", &redact.query_params),
            ("redact.body_fields", &redact.body_fields),
            ("redact.gateway_fields", &redact.gateway_fields),
        ] {
            if names.iter().any(|n| n.is_empty() || n.len() > 64) {
                return Err(refuse(field, "names are 1 to 64 bytes"));
            }
        }
        if redact.key_env.is_empty() {
            return Err(refuse("redact.key_env", "must not be empty"));
        }
        for (field, names) in [
            ("ext_proc.request_attributes", &ext_proc.request_attributes),
            (
                "ext_proc.response_attributes",
                &ext_proc.response_attributes,
            ),
        ] {
            for name in names {
                crate::extproc::attributes::check(name).map_err(|why| refuse(field, why))?;
            }
        }
        Ok(())
    }
}

/// Headers of the requests to the node that a configuration may not set.
const RESERVED_HEADERS: [&str; 9] = [
    "host",
    "content-type",
    "content-length",
    "te",
    "grpc-timeout",
    "x-oob-mirror-version",
    "x-oob-mirror-records",
    "x-oob-mirror-shard",
    "transfer-encoding",
];

/// A value Envoy sends as it is: not empty, no control characters (a line break would end it).
pub fn valid_header_value(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_control() && c != '\t')
}

/// `node.headers`: each `{"name", "value"}` or `{"name", "value_env"}`.
fn node_headers(node: &Section) -> Result<Vec<NodeHeader>, ConfigError> {
    node.objects("headers", &["name", "value", "value_env"])?
        .iter()
        .map(|h| {
            let name = h
                .string("name")?
                .ok_or_else(|| refuse(&h.field("name"), "missing field `name`"))?;
            let value = match (h.string("value")?, h.string("value_env")?) {
                (Some(value), None) => HeaderValue::Inline(value),
                (None, Some(var)) => HeaderValue::Env(var),
                _ => {
                    return Err(refuse(
                        &h.path,
                        "needs exactly one of `value` and `value_env`",
                    ))
                }
            };
            Ok(NodeHeader { name, value })
        })
        .collect()
}

fn positive(field: &str, value: u64) -> Result<(), ConfigError> {
    if value == 0 {
        return Err(refuse(field, "must be greater than 0"));
    }
    Ok(())
}

fn at_most(field: &str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(refuse(field, format!("must be at most {max}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn only_cluster_is_required_and_defaults_apply() {
        let config = Config::parse(br#"{"node":{"cluster":"n"}}"#).unwrap();
        assert_eq!(config.node.cluster, "n");
        assert_eq!(config.node.authority, "oob-mirror");
        assert_eq!(config.node.path, "/v1/records");
        assert_eq!(config.node.timeout_ms, 1000);
        assert_eq!(config.capture, CaptureConfig::default());
        assert_eq!(config.capture.request_body_max, 65536);
        assert_eq!(config.capture.max_buffered_bytes, 16 << 20);
        assert_eq!(config.batch.max_records, 64);
        assert_eq!(config.batch.max_bytes, 1 << 20);
        assert_eq!(config.batch.flush_ms, 50);
        assert_eq!(config.batch.max_queue_bytes, 8 << 20);
        assert_eq!(config.batch.max_inflight, 4);
        assert_eq!(config.node.protocol, Protocol::Batch);
        assert_eq!(
            config.ext_proc.request_attributes,
            ["request.id", "request.time", "source.address"]
        );
        assert!(config.ext_proc.response_attributes.is_empty());
        assert_eq!(config.ext_proc.max_streams, 256);
    }

    #[test]
    fn ext_proc_section_takes_lists() {
        let config = Config::parse(
            br#"{"node":{"cluster":"n","protocol":"ext_proc"},
                 "ext_proc":{"request_attributes":[],"response_attributes":["response.code"],
                             "max_streams":3}}"#,
        )
        .unwrap();
        assert_eq!(config.node.protocol, Protocol::ExtProc);
        assert!(config.ext_proc.request_attributes.is_empty());
        assert_eq!(config.ext_proc.response_attributes, ["response.code"]);
        assert_eq!(config.ext_proc.max_streams, 3);
        assert_eq!(
            field_of(r#"{"node":{"cluster":"n","protocol":"grpc"}}"#),
            "node.protocol"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"n"},"ext_proc":{"max_streams":0}}"#),
            "ext_proc.max_streams"
        );
        assert_eq!(
            field_of(
                r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":["request.headers"]}}"#
            ),
            "ext_proc.request_attributes"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":[""]}}"#),
            "ext_proc.request_attributes"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":"request.id"}}"#),
            "ext_proc.request_attributes"
        );
    }

    #[test]
    fn full_config_is_read() {
        let config = Config::parse(
            br#"{"node":{"cluster":"c","authority":"a","path":"/p","timeout_ms":5},
                 "capture":{"request_body_max":0,"response_body_max":10,"max_buffered_bytes":0},
                 "batch":{"max_records":1,"max_bytes":4096,"flush_ms":1,
                          "max_queue_bytes":4096,"max_inflight":1}}"#,
        )
        .unwrap();
        assert_eq!(config.capture.request_body_max, 0);
        assert_eq!(config.batch.max_inflight, 1);
    }

    fn field_of(json: &str) -> String {
        Config::parse(json.as_bytes()).unwrap_err().field
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(field_of(r#"{"node":{"cluster":""}}"#), "node.cluster");
        assert_eq!(field_of(r#"{}"#), "node");
        assert_eq!(field_of(r#"{"node":{"timeout_ms":5}}"#), "node.cluster");
        assert_eq!(field_of(r#""text""#), "configuration");
        assert_eq!(field_of("not json"), "configuration");
        assert_eq!(field_of(""), "node.cluster");
        assert_eq!(field_of(r#"{"node":{"clustr":"x"}}"#), "node.clustr");
        assert_eq!(field_of(r#"{"node":{"cluster":"x"},"extra":1}"#), "extra");
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x","path":"v1"}}"#),
            "node.path"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x","timeout_ms":0}}"#),
            "node.timeout_ms"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"batch":{"max_records":0}}"#),
            "batch.max_records"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"batch":{"max_bytes":100}}"#),
            "batch.max_bytes"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"batch":{"max_bytes":9000000}}"#),
            "batch.max_queue_bytes"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"batch":{"max_inflight":0}}"#),
            "batch.max_inflight"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"batch":{"flush_ms":0}}"#),
            "batch.flush_ms"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"x"},"capture":{"request_body_max":-1}}"#),
            "capture.request_body_max"
        );
    }

    #[test]
    fn selection_sections_are_read_and_checked() {
        let config = Config::parse(
            br#"{"node":{"cluster":"n"},
                 "scope":{"exclude_paths":["/health","/static/"],"include_hosts":["*.a.test"],
                          "methods":["GET"]},
                 "sampling":{"rate":0.25,"max_per_second":100,"shed":false},
                 "capture":{"skip_body_content_types":["image/"]}}"#,
        )
        .unwrap();
        assert_eq!(config.scope.exclude_paths, ["/health", "/static/"]);
        assert_eq!(config.sampling.rate_ppm, 250_000);
        assert_eq!(config.sampling.max_per_second, Some(100));
        assert!(!config.sampling.shed);
        assert_eq!(config.capture.skip_body_content_types, ["image/"]);
        let default = Config::parse(br#"{"node":{"cluster":"n"}}"#).unwrap();
        assert_eq!(default.sampling, SamplingConfig::default());
        assert_eq!(default.sampling.rate_ppm, 1_000_000);
        assert!(default.sampling.shed);
        assert_eq!(default.scope, ScopeConfig::default());
        assert_eq!(default.capture.skip_body_content_types.len(), 15);
        for (text, ppm) in [
            ("0", 0),
            ("1", 1_000_000),
            ("1.0", 1_000_000),
            ("0.2", 200_000),
            ("0.000001", 1),
            ("0.123456", 123_456),
        ] {
            assert_eq!(millionths(text), Some(ppm), "{text}");
        }
        for text in [
            "1.1",
            "2",
            "-0.5",
            "0.1234567",
            "2e-1",
            ".5",
            "0.",
            "00.5",
            "1.000001",
        ] {
            assert_eq!(millionths(text), None, "{text}");
        }
        for (json, field) in [
            (r#""sampling":{"rate":1.5}"#, "sampling.rate"),
            (r#""sampling":{"rate":"0.5"}"#, "sampling.rate"),
            (
                r#""sampling":{"max_per_second":0}"#,
                "sampling.max_per_second",
            ),
            (r#""sampling":{"shed":1}"#, "sampling.shed"),
            (r#""sampling":{"ratio":1}"#, "sampling.ratio"),
            (
                r#""scope":{"exclude_paths":["health"]}"#,
                "scope.exclude_paths",
            ),
            (
                r#""scope":{"exclude_paths":["/a?b"]}"#,
                "scope.exclude_paths",
            ),
            (
                r#""scope":{"include_hosts":["a.test:80"]}"#,
                "scope.include_hosts",
            ),
            (
                r#""scope":{"include_hosts":["a.*.test"]}"#,
                "scope.include_hosts",
            ),
            (r#""scope":{"methods":["GET "]}"#, "scope.methods"),
            (
                r#""capture":{"skip_body_content_types":["image"]}"#,
                "capture.skip_body_content_types",
            ),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n"}},{json}}}"#);
            assert_eq!(field_of(&text), field, "{text}");
        }
    }

    #[test]
    fn node_headers_are_read_and_their_values_never_shown() {
        let config = Config::parse(
            br#"{"node":{"cluster":"n","headers":[{"name":"authorization","value":"Bearer s3cr3t"},
                 {"name":"x-node-key","value_env":"NODE_KEY"}]}}"#,
        )
        .unwrap();
        let headers = &config.node.headers;
        assert_eq!(headers[0].name, "authorization");
        assert!(headers[0].value == HeaderValue::Inline("Bearer s3cr3t".into()));
        assert!(headers[1].value == HeaderValue::Env("NODE_KEY".into()));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        for (headers, field) in [
            (r#"[{"name":"x"}]"#, "node.headers[0]"),
            (
                r#"[{"name":"x","value":"a","value_env":"B"}]"#,
                "node.headers[0]",
            ),
            (r#"[{"value":"a"}]"#, "node.headers[0].name"),
            (r#"[{"name":"X-Key","value":"a"}]"#, "node.headers[0].name"),
            (
                r#"[{"name":"content-type","value":"a"}]"#,
                "node.headers[0].name",
            ),
            (
                r#"[{"name":"x","value":"a"},{"name":"y","value":"a\nb"}]"#,
                "node.headers[1].value",
            ),
            (
                r#"[{"name":"x","value_env":""}]"#,
                "node.headers[0].value_env",
            ),
            (
                r#"[{"name":"x","value":"a","extra":1}]"#,
                "node.headers[0].extra",
            ),
            (r#"["x: a"]"#, "node.headers[0]"),
            (r#"{"name":"x"}"#, "node.headers"),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n","headers":{headers}}}}}"#);
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{text}");
            assert!(!err.to_string().contains("a\nb"), "{err}");
        }
    }

    #[test]
    fn redact_mode_and_gateway_fields() {
        let default = Config::parse(br#"{"node":{"cluster":"n"}}"#).unwrap();
        assert_eq!(default.redact.mode, RedactMode::Node);
        assert_eq!(default.redact.gateway_fields, ["password", "passwd"]);
        assert_eq!(default.redact, RedactConfig::default());
        let config = Config::parse(
            br#"{"node":{"cluster":"n"},"redact":{"mode":"gateway","gateway_fields":["pin"]}}"#,
        )
        .unwrap();
        assert_eq!(config.redact.mode, RedactMode::Gateway);
        assert_eq!(config.redact.gateway_fields, ["password", "passwd", "pin"]);
        let config = Config::parse(br#"{"node":{"cluster":"n"},"redact":{"mode":"node"}}"#);
        assert_eq!(config.unwrap().redact.mode, RedactMode::Node);
        for (json, field) in [
            (r#"{"mode":"edge"}"#, "redact.mode"),
            (r#"{"mode":true}"#, "redact.mode"),
            (r#"{"gateway_fields":[""]}"#, "redact.gateway_fields"),
            (r#"{"gateway_fields":"pin"}"#, "redact.gateway_fields"),
            (r#"{"modes":"node"}"#, "redact.modes"),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n"}},"redact":{json}}}"#);
            assert_eq!(field_of(&text), field, "{text}");
        }
        let err = Config::parse(br#"{"node":{"cluster":"n"},"redact":{"mode":"edge"}}"#);
        assert_eq!(
            err.unwrap_err().to_string(),
            "redact.mode: unknown variant `edge`, expected `node` or `gateway`"
        );
    }

    #[test]
    fn shards_default_to_one_and_are_bounded() {
        let config = Config::parse(br#"{"node":{"cluster":"n"}}"#).unwrap();
        assert_eq!(config.node.shards, 1);
        for shards in [1, 16, 64] {
            let text = format!(r#"{{"node":{{"cluster":"n","shards":{shards}}}}}"#);
            assert_eq!(Config::parse(text.as_bytes()).unwrap().node.shards, shards);
        }
        for value in ["0", "65", "-1", "1.5", "\"16\"", "18446744073709551616"] {
            let text = format!(r#"{{"node":{{"cluster":"n","shards":{value}}}}}"#);
            assert_eq!(field_of(&text), "node.shards", "{text}");
        }
        let err = Config::parse(br#"{"node":{"cluster":"n","shards":65}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node.shards: must be from 1 to 64, found 65"
        );
        assert_eq!(
            field_of(r#"{"node":{"cluster":"n","shard":2}}"#),
            "node.shard"
        );
        assert_eq!(
            field_of(
                r#"{"node":{"cluster":"n","headers":[{"name":"x-oob-mirror-shard","value":"1"}]}}"#
            ),
            "node.headers[0].name"
        );
    }

    #[test]
    fn message_reads_as_one_line() {
        let err = Config::parse(br#"{"node":{"cluster":" "}}"#).unwrap_err();
        assert_eq!(err.to_string(), "node.cluster: must not be empty");
    }

    #[test]
    fn trailing_bytes_after_the_object_are_refused() {
        for text in [
            r#"{"node":{"cluster":"n"}} junk"#,
            r#"{"node":{"cluster":"n"}}{"node":{"cluster":"m"}}"#,
        ] {
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.field, "configuration", "{text}: {err}");
            assert!(err.reason.contains("trailing"), "{text}: {err}");
        }
        // Whitespace after the object is fine.
        assert!(Config::parse(b"{\"node\":{\"cluster\":\"n\"}}\n ").is_ok());
    }

    #[test]
    fn values_of_the_wrong_type_are_refused_by_name() {
        for (text, field) in [
            (r#"[["n"]]"#, "configuration"),
            (r#"{"node":["n","a","/p",5]}"#, "node"),
            (r#"{"node":{"cluster":"n"},"batch":[1]}"#, "batch"),
            (r#"{"node":{"cluster":"n"},"ext_proc":[[]]}"#, "ext_proc"),
            (
                r#"{"node":{"cluster":"n"},"ext_proc":{"max_streams":[1]}}"#,
                "ext_proc.max_streams",
            ),
            (
                r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":[["a"]]}}"#,
                "ext_proc.request_attributes",
            ),
            (
                r#"{"ext_proc":{"request_attributes":[]},"node":{"cluster":"n","x":[]}}"#,
                "node.x",
            ),
            (r#"{"node":{"cluster":5}}"#, "node.cluster"),
            (r#"{"node":{"cluster":null}}"#, "node.cluster"),
            (r#"{"node":{"cluster":"n","protocol":1}}"#, "node.protocol"),
            (
                r#"{"node":{"cluster":"n","timeout_ms":"5"}}"#,
                "node.timeout_ms",
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":1.5}}"#,
                "node.timeout_ms",
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":1e3}}"#,
                "node.timeout_ms",
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":18446744073709551616}}"#,
                "node.timeout_ms",
            ),
            (r#"{"node":{"cluster":"n","cluster":"m"}}"#, "node.cluster"),
            (r#"{"node":{"cluster":"n"},"node":{"cluster":"m"}}"#, "node"),
        ] {
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.field, field, "{text}: {err}");
        }
        assert_eq!(field_of(r#"{"":{"clustr":"x"}}"#), r#""""#);
        assert_eq!(field_of(r#"{"node":{"":1}}"#), r#"node."""#);
        let err = Config::parse(br#"{"node":{"cluster":"n","cluster":"m"}}"#).unwrap_err();
        assert_eq!(err.to_string(), "node.cluster: duplicate field `cluster`");
        let err = Config::parse(br#"{"node":{"clustr":"n"}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node.clustr: unknown field `clustr`, expected one of `cluster`, `authority`, `path`, `timeout_ms`, `protocol`, `headers`, `shards`"
        );
        // Brackets inside strings are text, not arrays.
        let config = Config::parse(br#"{"node":{"cluster":"outbound|9090||[x]\"]"}}"#).unwrap();
        assert_eq!(config.node.cluster, "outbound|9090||[x]\"]");
    }

    #[test]
    fn a_refusal_is_one_line_whatever_the_keys_hold() {
        let err = Config::parse(b"{\"node\":{\"cluster\":\"n\",\"a\\nb\":1}}").unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.contains("a\\nb"), "{line:?}");
    }
}
