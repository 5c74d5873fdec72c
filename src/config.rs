//! Plugin configuration: JSON read by serde's derives (through serde_json and
//! serde_path_to_error), then checked as a whole, so that a bad configuration is refused with
//! one message naming the field by its path (`node.headers[0].name: ...`). Unknown and repeated
//! fields are refused, and so is a value of the wrong type, `null` included.
//!
//! The sections that map one to one (`capture`, `batch`, `ext_proc`, `scope`) are read straight
//! into their public types, their defaults from `Default` (their `Deserialize` checks nothing
//! more: `Config::parse` does); the others go through a private raw layer (`RawConfig`...) that
//! `Config::from_raw` turns into the public types.

use crate::batch::MAX_SHARDS;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_path_to_error::Segment;
use std::fmt;
use std::marker::PhantomData;

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
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// The configuration as serde reads it, before [`Config::from_raw`] turns it into the public
/// types. Each object refuses unknown fields (serde's derived visitors refuse repeated ones);
/// fields without a `default` are required.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Object<RawNode>,
    #[serde(default)]
    capture: Object<CaptureConfig>,
    #[serde(default)]
    batch: Object<BatchConfig>,
    #[serde(default)]
    ext_proc: Object<ExtProcConfig>,
    #[serde(default)]
    redact: Object<RawRedact>,
    #[serde(default)]
    scope: Object<ScopeConfig>,
    #[serde(default)]
    sampling: Object<RawSampling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    cluster: String,
    #[serde(default = "default_authority")]
    authority: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    protocol: Protocol,
    #[serde(default)]
    headers: List<Object<RawHeader>>,
    /// Read wide, so that an out-of-range count is refused with the range.
    #[serde(default = "default_shards")]
    shards: u64,
}

fn default_authority() -> String {
    "oob-mirror".to_owned()
}

fn default_path() -> String {
    "/v1/records".to_owned()
}

fn default_timeout_ms() -> u64 {
    1000
}

fn default_shards() -> u64 {
    1
}

/// `{"name", "value"}` or `{"name", "value_env"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    #[serde(default, deserialize_with = "present")]
    value: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value_env: Option<String>,
}

/// The lists add to the defaults (see [`Config::from_raw`]), so they default to empty here.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRedact {
    enabled: bool,
    mode: RedactMode,
    headers: Vec<String>,
    query_params: Vec<String>,
    body_fields: Vec<String>,
    gateway_fields: Vec<String>,
    key_env: String,
}

impl Default for RawRedact {
    fn default() -> Self {
        let d = RedactConfig::default();
        RawRedact {
            enabled: d.enabled,
            mode: d.mode,
            headers: Vec::new(),
            query_params: Vec::new(),
            body_fields: Vec::new(),
            gateway_fields: Vec::new(),
            key_env: d.key_env,
        }
    }
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawSampling {
    /// The number's text, so that its places are counted and converted exactly (`millionths`),
    /// which a float cannot do.
    #[serde(deserialize_with = "present")]
    rate: Option<Box<RawValue>>,
    #[serde(deserialize_with = "present")]
    max_per_second: Option<u64>,
    shed: bool,
}

impl Default for RawSampling {
    fn default() -> Self {
        RawSampling {
            rate: None,
            max_per_second: None,
            shed: SamplingConfig::default().shed,
        }
    }
}

/// An optional field that, when written, holds a value: serde reads `null` as an absent
/// `Option`, and a `null` written here is refused instead, like any other wrong type.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl<'de> Deserialize<'de> for Protocol {
    /// A string; serde's derived enums would also take `{"batch": null}`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "batch" => Ok(Protocol::Batch),
            "ext_proc" => Ok(Protocol::ExtProc),
            other => Err(de::Error::unknown_variant(other, &["batch", "ext_proc"])),
        }
    }
}

impl<'de> Deserialize<'de> for RedactMode {
    /// A string; serde's derived enums would also take `{"node": null}`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "node" => Ok(RedactMode::Node),
            "gateway" => Ok(RedactMode::Gateway),
            other => Err(de::Error::unknown_variant(other, &["node", "gateway"])),
        }
    }
}

/// A JSON object read as `T`. Not `T` itself: serde's derived structs also take a list of
/// the values in field order (serde-rs/serde#1587), and a refusal of a string written in
/// place of an object would repeat it (a node header written as `"authorization: Bearer …"`).
#[derive(Default)]
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ObjectVisitor(PhantomData))
    }
}

struct ObjectVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
    type Value = Object<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Object<T>, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map)).map(Object)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Object<T>, E> {
        Err(E::invalid_type(Unexpected::Other("string"), &self))
    }
}

/// A JSON list, refused without repeating a string written in its place (as [`Object`]).
struct List<T>(Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(List(items))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<List<T>, E> {
        Err(E::invalid_type(Unexpected::Other("string"), &self))
    }
}

/// A refusal by serde, at the path serde_path_to_error kept (`node.headers[0].name`).
fn refusal(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let mut field = String::new();
    for segment in err.path() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_field(&mut field, key),
            Segment::Enum { variant } => push_field(&mut field, variant),
            // A key that was not read (text that is not JSON) adds nothing to the path.
            Segment::Unknown => {}
        }
    }
    let json = err.into_inner();
    let mut reason = json.to_string();
    // The path says where a value is wrong; the position only helps in text that is not JSON.
    if json.is_data() {
        let at = format!(" at line {} column {}", json.line(), json.column());
        if let Some(len) = reason.strip_suffix(&at).map(str::len) {
            reason.truncate(len);
        }
    }
    // serde refuses a missing or repeated field at the object holding it; name the field.
    let named = ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|start| reason.strip_prefix(start)?.split_once('`'));
    if let Some((name, _)) = named {
        push_field(&mut field, name);
    }
    if field.is_empty() {
        field = "configuration".to_owned();
    }
    ConfigError { field, reason }
}

fn push_field(path: &mut String, name: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    // An empty key still has to read as a field in the one log line.
    path.push_str(if name.is_empty() { "\"\"" } else { name });
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
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let raw: Object<RawConfig> =
            serde_path_to_error::deserialize(&mut json).map_err(refusal)?;
        // Only whitespace may follow the object.
        json.end()
            .map_err(|err| refuse("configuration", err.to_string()))?;
        let config = Config::from_raw(raw.0)?;
        config.check()?;
        Ok(config)
    }

    /// The fields as written, or their defaults (the README's configuration table).
    fn from_raw(raw: RawConfig) -> Result<Config, ConfigError> {
        let node = raw.node.0;
        let shards = u32::try_from(node.shards)
            .ok()
            .filter(|shards| (1..=MAX_SHARDS).contains(shards))
            .ok_or_else(|| {
                let reason = format!("must be from 1 to {MAX_SHARDS}, found {}", node.shards);
                refuse("node.shards", reason)
            })?;
        let headers = node
            .headers
            .0
            .into_iter()
            .enumerate()
            .map(|(i, Object(header))| {
                let value = match (header.value, header.value_env) {
                    (Some(value), None) => HeaderValue::Inline(value),
                    (None, Some(var)) => HeaderValue::Env(var),
                    _ => {
                        return Err(refuse(
                            &format!("node.headers[{i}]"),
                            "needs exactly one of `value` and `value_env`",
                        ))
                    }
                };
                Ok(NodeHeader {
                    name: header.name,
                    value,
                })
            })
            .collect::<Result<_, _>>()?;
        let node = NodeConfig {
            cluster: node.cluster,
            authority: node.authority,
            path: node.path,
            timeout_ms: node.timeout_ms,
            protocol: node.protocol,
            headers,
            shards,
        };
        // Lists add to the defaults: a configuration cannot drop a default secret by naming
        // another one; `enabled: false` turns redaction off.
        let (d, r) = (RedactConfig::default(), raw.redact.0);
        let redact = RedactConfig {
            enabled: r.enabled,
            mode: r.mode,
            gateway_fields: [d.gateway_fields, r.gateway_fields].concat(),
            headers: [d.headers, r.headers].concat(),
            query_params: [d.query_params, r.query_params].concat(),
            body_fields: [d.body_fields, r.body_fields].concat(),
            key_env: r.key_env,
        };
        let s = raw.sampling.0;
        let rate_ppm = match s.rate {
            None => SamplingConfig::default().rate_ppm,
            Some(rate) => millionths(rate.get()).ok_or_else(|| {
                let text = rate.get();
                let found = match text.bytes().next() {
                    Some(b'-' | b'0'..=b'9') => text,
                    Some(b'"') => "a string",
                    Some(b'{') => "an object",
                    Some(b'[') => "a list",
                    Some(b't' | b'f') => "a boolean",
                    _ => "null",
                };
                refuse(
                    "sampling.rate",
                    format!("expected a decimal from 0 to 1 with at most 6 places, found {found}"),
                )
            })?,
        };
        Ok(Config {
            node,
            // The content-type list replaces the default (mirroring images is a choice, not
            // a leak).
            capture: raw.capture.0,
            batch: raw.batch.0,
            ext_proc: raw.ext_proc.0,
            redact,
            scope: raw.scope.0,
            sampling: SamplingConfig {
                rate_ppm,
                max_per_second: s.max_per_second,
                shed: s.shed,
            },
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
                "ext_proc.request_attributes[0]",
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

    /// serde's texts, where they replaced ours: the one line a user reads, naming the field.
    #[test]
    fn serde_refusals_name_the_field_by_its_path() {
        for (text, line) in [
            (r#"{}"#, "node: missing field `node`"),
            (
                r#""text""#,
                "configuration: invalid type: string, expected an object",
            ),
            (
                r#"{"node":["n","a","/p",5]}"#,
                "node: invalid type: sequence, expected an object",
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":"5"}}"#,
                r#"node.timeout_ms: invalid type: string "5", expected u64"#,
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":1.5}}"#,
                "node.timeout_ms: invalid type: floating point `1.5`, expected u64",
            ),
            (
                r#"{"node":{"cluster":"n","timeout_ms":-1}}"#,
                "node.timeout_ms: invalid value: integer `-1`, expected u64",
            ),
            (
                r#"{"node":{"cluster":"n","headers":[{"value":"a"}]}}"#,
                "node.headers[0].name: missing field `name`",
            ),
            (
                r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":["a",1]}}"#,
                "ext_proc.request_attributes[1]: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"node":{"cluster":"n"},"sampling":{"rate":"0.5"}}"#,
                "sampling.rate: expected a decimal from 0 to 1 with at most 6 places, found a \
                 string",
            ),
            // Text that is not JSON: where it stopped making sense.
            (
                "{\"node\":{\"cluster\":\"n\",\n\"timeout_ms\":01}}",
                "node.timeout_ms: invalid number at line 2 column 15",
            ),
            (
                r#"{"node":{"cluster":"n""#,
                "node: EOF while parsing an object at line 1 column 22",
            ),
            (
                r#"{"node":{"cluster":"n"} x"#,
                "configuration: expected `,` or `}` at line 1 column 25",
            ),
            (
                "not json",
                "configuration: expected ident at line 1 column 2",
            ),
        ] {
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), line, "{text}");
        }
    }

    /// serde's derived structs refuse a repeated field; the raw layer's, the public sections'
    /// and a header's too, and the raw `sampling.rate`.
    #[test]
    fn repeated_fields_are_refused_everywhere() {
        for (json, line) in [
            (
                r#""node":{"cluster":"n"},"node":{"cluster":"m"}"#,
                "node: duplicate field `node`",
            ),
            (
                r#""node":{"cluster":"n"},"batch":{"max_records":1,"max_records":2}"#,
                "batch.max_records: duplicate field `max_records`",
            ),
            (
                r#""node":{"cluster":"n"},"scope":{"methods":[],"methods":[]}"#,
                "scope.methods: duplicate field `methods`",
            ),
            (
                r#""node":{"cluster":"n"},"redact":{"mode":"node","mode":"node"}"#,
                "redact.mode: duplicate field `mode`",
            ),
            (
                r#""node":{"cluster":"n"},"sampling":{"rate":0.5,"rate":0.5}"#,
                "sampling.rate: duplicate field `rate`",
            ),
            (
                r#""node":{"cluster":"n","headers":[{"name":"x","value":"a","value":"b"}]}"#,
                "node.headers[0].value: duplicate field `value`",
            ),
            (
                r#""sampling":{},"sampling":{},"node":{"cluster":"n"}"#,
                "sampling: duplicate field `sampling`",
            ),
        ] {
            let text = format!("{{{json}}}");
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), line, "{text}");
        }
    }

    /// Where serde alone would take more than the README documents: `null` for an optional
    /// field, a list of values for an object, `{"variant": null}` for a name.
    #[test]
    fn values_serde_would_take_are_refused() {
        for (json, field) in [
            (
                r#""node":{"cluster":"n","timeout_ms":null}"#,
                "node.timeout_ms",
            ),
            (r#""node":{"cluster":"n","protocol":null}"#, "node.protocol"),
            (
                r#""node":{"cluster":"n","protocol":{"ext_proc":null}}"#,
                "node.protocol",
            ),
            (r#""node":{"cluster":"n","headers":null}"#, "node.headers"),
            (
                r#""node":{"cluster":"n","headers":[{"name":"x","value":null}]}"#,
                "node.headers[0].value",
            ),
            (
                r#""node":{"cluster":"n","headers":[["x","a"]]}"#,
                "node.headers[0]",
            ),
            (r#""node":{"cluster":"n"},"batch":null"#, "batch"),
            (r#""node":{"cluster":"n"},"batch":[64,4096]"#, "batch"),
            (
                r#""node":{"cluster":"n"},"redact":{"mode":{"node":null}}"#,
                "redact.mode",
            ),
            (
                r#""node":{"cluster":"n"},"scope":{"methods":null}"#,
                "scope.methods",
            ),
            (
                r#""node":{"cluster":"n"},"sampling":{"rate":null}"#,
                "sampling.rate",
            ),
            (
                r#""node":{"cluster":"n"},"sampling":{"max_per_second":null}"#,
                "sampling.max_per_second",
            ),
            (r#""node":{"cluster":"n"},"sampling":["1"]"#, "sampling"),
        ] {
            let text = format!("{{{json}}}");
            assert_eq!(field_of(&text), field, "{text}");
        }
    }

    /// A string where a header belongs may be the secret itself: the refusal does not repeat it.
    #[test]
    fn a_header_written_as_text_is_not_repeated() {
        for (headers, line) in [
            (
                r#""authorization: Bearer s3cr3t""#,
                "node.headers: invalid type: string, expected a list",
            ),
            (
                r#"["authorization: Bearer s3cr3t"]"#,
                "node.headers[0]: invalid type: string, expected an object",
            ),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n","headers":{headers}}}}}"#);
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.to_string(), line, "{text}");
        }
    }

    /// `sampling.rate` is read from the number's text, never as a float.
    #[test]
    fn the_rate_is_read_from_its_text() {
        for (rate, ppm) in [
            ("0.2", 200_000),
            ("0.000001", 1),
            ("0.999999", 999_999),
            ("1.000000", 1_000_000),
            ("0", 0),
            (" 0.5 ", 500_000),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n"}},"sampling":{{"rate":{rate}}}}}"#);
            let config = Config::parse(text.as_bytes()).unwrap();
            assert_eq!(config.sampling.rate_ppm, ppm, "{text}");
        }
        for (rate, found) in [
            ("1e-1", "1e-1"),
            ("0.1234567", "0.1234567"),
            ("[0.5]", "a list"),
            ("true", "a boolean"),
            ("{}", "an object"),
        ] {
            let text = format!(r#"{{"node":{{"cluster":"n"}},"sampling":{{"rate":{rate}}}}}"#);
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "sampling.rate: expected a decimal from 0 to 1 with at most 6 places, found \
                     {found}"
                ),
                "{text}"
            );
        }
    }

    /// What istiod sends (golang/protobuf jsonpb of the WasmPlugin's `pluginConfig`): keys
    /// sorted, `<>&` escaped, whole numbers without exponent.
    #[test]
    fn jsonpb_from_istiod_is_read() {
        let config = Config::parse(
            br#"{"batch":{"flush_ms":20},"node":{"authority":"a\u003cb\u003e","cluster":"outbound|9090||oob-mirror-node.oob-mirror.svc.cluster.local","headers":[{"name":"x-key","value":"k\u0026v"}],"path":"/v1/records?a=1\u0026b=2","timeout_ms":500},"sampling":{"max_per_second":100,"rate":0.25},"scope":{"exclude_paths":["/healthz"]}}"#,
        )
        .unwrap();
        assert_eq!(config.node.authority, "a<b>");
        assert_eq!(config.node.path, "/v1/records?a=1&b=2");
        assert_eq!(config.node.timeout_ms, 500);
        assert!(config.node.headers[0].value == HeaderValue::Inline("k&v".into()));
        assert_eq!(config.batch.flush_ms, 20);
        assert_eq!(config.batch.max_records, 64);
        assert_eq!(config.sampling.rate_ppm, 250_000);
        assert_eq!(config.sampling.max_per_second, Some(100));
        assert_eq!(config.scope.exclude_paths, ["/healthz"]);
    }

    #[test]
    fn a_refusal_is_one_line_whatever_the_keys_hold() {
        let err = Config::parse(b"{\"node\":{\"cluster\":\"n\",\"a\\nb\":1}}").unwrap_err();
        let line = err.to_string();
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.contains("a\\nb"), "{line:?}");
    }
}
