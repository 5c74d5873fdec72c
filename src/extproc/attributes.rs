//! Envoy attributes as ext_proc sends them: Envoy evaluates each configured name as a CEL
//! expression and puts the result in a `google.protobuf.Struct` under the filter's name,
//! booleans as `bool_value` and everything else printed to a `string_value`. A Wasm filter reads
//! the same attributes as bytes without their type, so the type of each name comes from here.

/// How Envoy hands an attribute to a Wasm module, and so how it must be printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text (or bytes), as is.
    Text,
    /// 8 little-endian bytes, printed in decimal.
    Int,
    /// 8 little-endian bytes, unsigned, printed in decimal.
    Uint,
    /// One byte.
    Bool,
    /// Nanoseconds since the Unix epoch, printed as RFC 3339 in UTC.
    Timestamp,
    /// Nanoseconds, printed as abseil prints a duration (`1.5s`, `250ms`).
    Duration,
}

/// Attributes whose value is not text. Names not listed here (and not refused below) are text.
const TYPED: [(&str, Kind); 18] = [
    ("request.time", Kind::Timestamp),
    ("request.duration", Kind::Duration),
    ("request.size", Kind::Int),
    ("request.total_size", Kind::Int),
    ("response.code", Kind::Int),
    ("response.grpc_status", Kind::Int),
    ("response.flags", Kind::Uint),
    ("response.size", Kind::Int),
    ("response.total_size", Kind::Int),
    ("response.backend_latency", Kind::Duration),
    ("source.port", Kind::Int),
    ("destination.port", Kind::Int),
    ("upstream.port", Kind::Int),
    ("upstream.request_attempt_count", Kind::Uint),
    ("connection.id", Kind::Uint),
    ("connection.mtls", Kind::Bool),
    ("connection.upstream_connection_id", Kind::Uint),
    ("upstream.local_address_port", Kind::Int),
];

/// Attributes that are maps or messages: Envoy prints them in a form a Wasm module cannot
/// reproduce from the bytes it gets, so they are refused in the configuration.
const REFUSED: [&str; 8] = [
    "request.headers",
    "response.headers",
    "response.trailers",
    "request.trailers",
    "metadata",
    "filter_state",
    "xds.upstream_host_metadata",
    "xds.node",
];

/// Whether a configured attribute name can be sent.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() || name.split('.').any(str::is_empty) {
        return Err(format!("'{name}' is not an attribute name"));
    }
    if REFUSED
        .iter()
        .any(|refused| name == *refused || name.starts_with(&format!("{refused}.")))
    {
        return Err(format!(
            "'{name}' is a map or a message; only scalar attributes are sent"
        ));
    }
    Ok(())
}

pub fn kind(name: &str) -> Kind {
    TYPED
        .iter()
        .find(|(typed, _)| *typed == name)
        .map_or(Kind::Text, |(_, kind)| *kind)
}

/// The path Envoy's property API takes for a dotted attribute name.
pub fn path(name: &str) -> Vec<&str> {
    name.split('.').collect()
}

/// A `google.protobuf.Value` as Envoy's ext_proc fills it for an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Bool(bool),
}

/// The value Envoy's ext_proc would send for an attribute of `kind` whose Wasm bytes are
/// `bytes`; `None` where the bytes do not have the kind's shape.
pub fn value(kind: Kind, bytes: &[u8]) -> Option<Value> {
    let int = || -> Option<i64> { Some(i64::from_le_bytes(bytes.try_into().ok()?)) };
    Some(match kind {
        Kind::Text => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
        Kind::Int => Value::Text(int()?.to_string()),
        Kind::Uint => Value::Text(u64::from_le_bytes(bytes.try_into().ok()?).to_string()),
        Kind::Bool => Value::Bool(*bytes.first()? != 0),
        Kind::Timestamp => Value::Text(rfc3339(int()?)),
        Kind::Duration => Value::Text(duration(int()?)),
    })
}

/// `2026-12-01T18:50:33.123456+00:00`: abseil's full RFC 3339 form, fraction without trailing
/// zeros, in UTC.
pub fn rfc3339(unix_ns: i64) -> String {
    let secs = unix_ns.div_euclid(1_000_000_000);
    let nanos = unix_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let day_secs = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{}+00:00",
        day_secs / 3600,
        day_secs % 3600 / 60,
        day_secs % 60,
        fraction(nanos)
    )
}

/// `.5`, `.123`, or nothing for whole seconds.
fn fraction(nanos: i64) -> String {
    if nanos == 0 {
        return String::new();
    }
    let digits = format!("{nanos:09}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// Gregorian date of a day count from 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// abseil's `FormatDuration`: `0`, `1.5ms`, `2h3m4.5s`, negative with a leading `-`.
pub fn duration(ns: i64) -> String {
    if ns == 0 {
        return "0".to_owned();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        let (unit, per) = match ns {
            n if n < 1_000 => ("ns", 1),
            n if n < 1_000_000 => ("us", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{}{unit}", ns / per, sub_unit(ns % per, per));
    }
    let hours = ns / 3_600_000_000_000;
    let minutes = ns / 60_000_000_000 % 60;
    let rest = ns % 60_000_000_000;
    let mut text = sign.to_owned();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if rest > 0 {
        let secs = rest / 1_000_000_000;
        text.push_str(&format!(
            "{secs}{}s",
            sub_unit(rest % 1_000_000_000, 1_000_000_000)
        ));
    }
    text
}

/// The fractional part of `part / per` as `.digits` without trailing zeros.
fn sub_unit(part: u64, per: u64) -> String {
    if part == 0 {
        return String::new();
    }
    let width = per.ilog10() as usize;
    let digits = format!("{part:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn timestamps_print_as_abseil_does() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(
            rfc3339(1_796_151_033_123_456_000),
            "2026-12-01T18:50:33.123456+00:00"
        );
        assert_eq!(
            rfc3339(951_782_400_500_000_000),
            "2000-02-29T00:00:00.5+00:00"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999999+00:00");
    }

    #[test]
    fn durations_print_as_abseil_does() {
        assert_eq!(duration(0), "0");
        assert_eq!(duration(999), "999ns");
        assert_eq!(duration(1_500), "1.5us");
        assert_eq!(duration(2_000_000), "2ms");
        assert_eq!(duration(1_250_000), "1.25ms");
        assert_eq!(duration(1_500_000_000), "1.5s");
        assert_eq!(duration(7_384_500_000_000), "2h3m4.5s");
        assert_eq!(duration(3_600_000_000_000), "1h");
        assert_eq!(duration(-2_000_000), "-2ms");
    }

    #[test]
    fn values_follow_the_kind() {
        assert_eq!(
            value(Kind::Text, b"127.0.0.1:5"),
            Some(Value::Text("127.0.0.1:5".into()))
        );
        assert_eq!(
            value(Kind::Int, &200i64.to_le_bytes()),
            Some(Value::Text("200".into()))
        );
        assert_eq!(value(Kind::Bool, &[1]), Some(Value::Bool(true)));
        assert_eq!(value(Kind::Int, b"abc"), None);
        assert_eq!(kind("request.time"), Kind::Timestamp);
        assert_eq!(kind("request.id"), Kind::Text);
        assert_eq!(path("source.address"), ["source", "address"]);
    }

    #[test]
    fn maps_and_malformed_names_are_refused() {
        assert!(check("request.id").is_ok());
        assert!(check("request.headers").is_err());
        assert!(check("metadata.filter_metadata").is_err());
        assert!(check("").is_err());
        assert!(check("request..id").is_err());
    }
}
