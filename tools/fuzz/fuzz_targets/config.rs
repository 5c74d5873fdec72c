//! Arbitrary bytes as the plugin configuration. The parser must never panic. A configuration
//! it accepts must say what the JSON says (each field as written, or the README's default when
//! absent), keep every value within the documented bounds, and read back the same when
//! written out again. A refusal must name a field and give a reason.

#![no_main]

use libfuzzer_sys::fuzz_target;
use oob_mirror::config::{
    Config, HeaderValue, Protocol, DEFAULT_REDACT_FIELDS, DEFAULT_REDACT_HEADERS, MIN_BATCH_BYTES,
    RATE_ALL,
};
use serde_json::{json, Value};

/// A section's field as written (Config::parse refuses arrays but the attribute lists, so every
/// section is an object).
fn field<'a>(parent: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    match parent? {
        Value::Object(fields) => fields.get(name),
        other => panic!("accepted {other} where a section holding {name} belongs"),
    }
}

fn text_or(value: Option<&Value>, default: &str) -> String {
    match value {
        Some(Value::String(text)) => text.clone(),
        Some(other) => panic!("accepted {other} for a string field"),
        None => default.to_owned(),
    }
}

fn number_or(value: Option<&Value>, default: u64) -> u64 {
    match value {
        Some(number) => number
            .as_u64()
            .unwrap_or_else(|| panic!("accepted {number} for a u64 field")),
        None => default,
    }
}

/// The fields the README documents, as the JSON wrote them, or its table's defaults.
fn check_against_json(config: &Config, json: &Value) {
    let root = Some(json);
    let node = field(root, "node");
    assert!(node.is_some(), "accepted without node");
    assert_eq!(config.node.cluster, text_or(field(node, "cluster"), ""));
    let authority = field(node, "authority");
    assert_eq!(config.node.authority, text_or(authority, "oob-mirror"));
    let path = field(node, "path");
    assert_eq!(config.node.path, text_or(path, "/v1/records"));
    let timeout_ms = field(node, "timeout_ms");
    assert_eq!(config.node.timeout_ms, number_or(timeout_ms, 1000));

    let capture = field(root, "capture");
    let batch = field(root, "batch");
    let (c, b) = (&config.capture, &config.batch);
    let numbers = [
        (c.request_body_max, capture, "request_body_max", 65536),
        (c.response_body_max, capture, "response_body_max", 65536),
        (
            c.max_buffered_bytes,
            capture,
            "max_buffered_bytes",
            16 << 20,
        ),
        (b.max_records, batch, "max_records", 64),
        (b.max_bytes, batch, "max_bytes", 1 << 20),
        (b.flush_ms, batch, "flush_ms", 50),
        (b.max_queue_bytes, batch, "max_queue_bytes", 8 << 20),
        (b.max_inflight, batch, "max_inflight", 4),
    ];
    for (value, parent, name, default) in numbers {
        let written = field(parent, name);
        assert_eq!(value, number_or(written, default), "{name}");
    }
}

/// The bounds `Config::parse` promises (README's configuration table, src/config.rs).
fn check_bounds(config: &Config) {
    let node = &config.node;
    assert!(!node.cluster.trim().is_empty());
    assert!(!node.authority.trim().is_empty());
    assert!(node.path.starts_with('/'));
    assert!((1..=u64::from(u32::MAX)).contains(&node.timeout_ms));
    let batch = &config.batch;
    assert!(batch.max_records >= 1);
    assert!((1..=60_000).contains(&batch.flush_ms));
    assert!((1..=1024).contains(&batch.max_inflight));
    assert!(batch.max_bytes >= MIN_BATCH_BYTES);
    assert!(batch.max_queue_bytes >= batch.max_bytes);
    assert!(config.capture.request_body_max <= 64 << 20);
    assert!(config.capture.response_body_max <= 64 << 20);
    assert!((1..=65_536).contains(&config.ext_proc.max_streams));
    assert!(config.sampling.rate_ppm <= RATE_ALL);
    assert_ne!(config.sampling.max_per_second, Some(0));
    assert!(config
        .scope
        .exclude_paths
        .iter()
        .all(|p| p.starts_with('/')));
}

fn written_out(config: &Config) -> Vec<u8> {
    let c = config;
    let c_json = json!({
        "node": {
            "cluster": c.node.cluster,
            "authority": c.node.authority,
            "path": c.node.path,
            "timeout_ms": c.node.timeout_ms,
            "protocol": match c.node.protocol {
                Protocol::Batch => "batch",
                Protocol::ExtProc => "ext_proc",
            },
            "headers": c.node.headers.iter().map(|h| match &h.value {
                HeaderValue::Inline(value) => json!({"name": h.name, "value": value}),
                HeaderValue::Env(var) => json!({"name": h.name, "value_env": var}),
            }).collect::<Vec<_>>(),
        },
        "scope": {
            "exclude_paths": c.scope.exclude_paths,
            "include_hosts": c.scope.include_hosts,
            "methods": c.scope.methods,
        },
        "ext_proc": {
            "request_attributes": c.ext_proc.request_attributes,
            "response_attributes": c.ext_proc.response_attributes,
            "max_streams": c.ext_proc.max_streams,
        },
        "capture": {
            "request_body_max": c.capture.request_body_max,
            "response_body_max": c.capture.response_body_max,
            "max_buffered_bytes": c.capture.max_buffered_bytes,
            "skip_body_content_types": c.capture.skip_body_content_types,
        },
        // The lists hold the defaults first, then what the JSON added: write out the added.
        "redact": {
            "enabled": c.redact.enabled,
            "headers": c.redact.headers[DEFAULT_REDACT_HEADERS.len()..],
            "query_params": c.redact.query_params[DEFAULT_REDACT_FIELDS.len()..],
            "body_fields": c.redact.body_fields[DEFAULT_REDACT_FIELDS.len()..],
            "key_env": c.redact.key_env,
        },
        "batch": {
            "max_records": c.batch.max_records,
            "max_bytes": c.batch.max_bytes,
            "flush_ms": c.batch.flush_ms,
            "max_queue_bytes": c.batch.max_queue_bytes,
            "max_inflight": c.batch.max_inflight,
        },
    })
    .to_string();
    // The rate as a plain decimal: serde_json would write 0.000001 as 1e-6, which the
    // configuration refuses.
    let rate = c.sampling.rate_ppm;
    let mut sampling = format!(
        r#""sampling":{{"rate":{}.{:06},"shed":{}"#,
        rate / RATE_ALL,
        rate % RATE_ALL,
        c.sampling.shed
    );
    if let Some(max) = c.sampling.max_per_second {
        sampling.push_str(&format!(r#","max_per_second":{max}"#));
    }
    let mut text = c_json;
    text.truncate(text.len() - 1);
    format!("{text},{sampling}}}}}").into_bytes()
}

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            let json: Value = match serde_json::from_slice(data) {
                Ok(json) => json,
                Err(err) => panic!("accepted input is not one JSON value: {err}"),
            };
            check_against_json(&config, &json);
            check_bounds(&config);
            match Config::parse(&written_out(&config)) {
                Ok(again) => assert_eq!(again, config, "written out and read back differs"),
                Err(err) => panic!("written out and refused: {err}"),
            }
        }
        Err(err) => {
            assert!(!err.field.is_empty(), "refusal names no field: {err:?}");
            assert!(!err.reason.is_empty(), "refusal gives no reason: {err:?}");
            // The one log line Envoy prints must stay one line.
            assert!(
                !err.to_string().contains(['\n', '\r']),
                "refusal spans lines: {err}"
            );
        }
    }
});
