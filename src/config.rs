//! Plugin configuration: parsed with serde (unknown fields refused), then checked, so that a
//! bad configuration is refused whole with one message naming the field.

use serde::Deserialize;
use std::fmt;

/// Smallest batch budget that still fits one record with empty bodies and a few headers.
pub const MIN_BATCH_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub capture: CaptureConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub ext_proc: ExtProcConfig,
}

/// How records reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// msgpack batches over HTTP (docs/wire-format.md).
    #[default]
    Batch,
    /// One `envoy.service.ext_proc.v3.ExternalProcessor/Process` gRPC stream per exchange.
    ExtProc,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub cluster: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub protocol: Protocol,
}

/// The ext_proc protocol's settings (used when `node.protocol` is `ext_proc`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
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

/// Where the configuration holds lists; an array anywhere else is refused.
const LIST_FIELDS: [&str; 2] = [
    "ext_proc.request_attributes",
    "ext_proc.response_attributes",
];

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    pub request_body_max: u64,
    pub response_body_max: u64,
    /// Body bytes all streams of one worker may hold while their records are not yet queued.
    pub max_buffered_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_records: u64,
    pub max_bytes: u64,
    pub flush_ms: u64,
    pub max_queue_bytes: u64,
    pub max_inflight: u64,
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

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            request_body_max: 64 * 1024,
            response_body_max: 64 * 1024,
            max_buffered_bytes: 16 * 1024 * 1024,
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

/// The dotted path of the first array that is not one of [`LIST_FIELDS`]: serde's derived
/// structs would also read an array positionally (`{"node":["n"]}`), which nobody means. A
/// scan of the JSON's structure, not a parse into values (which would bring float formatting
/// into the module).
fn misplaced_array(json: &[u8]) -> Option<String> {
    // Each open container: its dotted path and whether it is an array.
    let mut open: Vec<(String, bool)> = Vec::new();
    let mut text = Vec::new();
    let (mut in_string, mut escaped) = (false, false);
    // The last string seen, and the key the next value in an object is under.
    let (mut last, mut key) = (String::new(), String::new());
    for &byte in json {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    in_string = false;
                    last = String::from_utf8_lossy(&text).into_owned();
                    continue;
                }
                _ => {}
            }
            text.push(byte);
            continue;
        }
        match byte {
            b'"' => {
                in_string = true;
                text.clear();
            }
            b':' => key = std::mem::take(&mut last),
            b'{' | b'[' => {
                let (path, in_array) = match open.last() {
                    None => (String::new(), false),
                    Some((parent, true)) => (parent.clone(), true),
                    Some((parent, false)) if parent.is_empty() => (key.clone(), false),
                    Some((parent, false)) => (format!("{parent}.{key}"), false),
                };
                let array = byte == b'[';
                if array && (in_array || !LIST_FIELDS.contains(&path.as_str())) {
                    return Some(path);
                }
                open.push((path, array));
            }
            b'}' | b']' => {
                open.pop();
            }
            _ => {}
        }
    }
    None
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
        if let Some(path) = misplaced_array(bytes) {
            return Err(refuse(
                "configuration",
                format!("an array at '{path}': only ext_proc attribute lists are arrays"),
            ));
        }
        let mut json = serde_json::Deserializer::from_slice(bytes);
        let config: Config = serde_path_to_error::deserialize(&mut json).map_err(from_serde)?;
        // One JSON value and nothing after it: `{...} junk` is a broken file, not a config.
        json.end()
            .map_err(|err| refuse("configuration", err.to_string()))?;
        config.check()?;
        Ok(config)
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
        self.check_ext_proc()
    }

    fn check_ext_proc(&self) -> Result<(), ConfigError> {
        let ext_proc = &self.ext_proc;
        positive("ext_proc.max_streams", ext_proc.max_streams)?;
        at_most("ext_proc.max_streams", ext_proc.max_streams, 65_536)?;
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

/// Names the field where serde stopped (for an unknown field, the field itself), so the one
/// log line says which field is wrong.
fn from_serde(err: serde_path_to_error::Error<serde_json::Error>) -> ConfigError {
    let path = err.path().to_string();
    let reason = err.into_inner().to_string();
    // For a missing field serde stops at its parent; the field itself is only in the text.
    let missing = reason
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    let field = match (path.as_str(), missing) {
        ("" | ".", Some(name)) => name.to_owned(),
        ("" | ".", None) => "configuration".to_owned(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (parent, None) => parent.to_owned(),
    };
    ConfigError { field, reason }
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
    fn arrays_in_place_of_objects_are_refused() {
        for text in [
            r#"[["n"]]"#,
            r#"{"node":["n","a","/p",5]}"#,
            r#"{"node":{"cluster":"n"},"batch":[1]}"#,
            r#"{"node":{"cluster":"n"},"ext_proc":[[]]}"#,
            r#"{"node":{"cluster":"n"},"ext_proc":{"max_streams":[1]}}"#,
            r#"{"node":{"cluster":"n"},"ext_proc":{"request_attributes":[["a"]]}}"#,
            r#"{"ext_proc":{"request_attributes":[]},"node":{"cluster":"n","x":[]}}"#,
        ] {
            let err = Config::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.field, "configuration", "{text}: {err}");
        }
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
