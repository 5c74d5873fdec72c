//! What the node shows: one JSON line per detection (stdout), the
//! `/attacks` page, and `/metrics` in Prometheus text format.

use std::fmt::Write as _;

use serde_json::json;

use crate::analysis::pool::{Detection, Snapshot};

/// The detection as one line of JSON (no newline).
pub fn json_line(d: &Detection) -> String {
    let rules: Vec<_> = d
        .rules
        .iter()
        .map(|m| json!({"id": m.id, "msg": m.msg, "severity": m.severity, "data": m.data}))
        .collect();
    json!({
        "id": d.id,
        "request_id": d.request_id,
        "ts": rfc3339(d.ts_ns),
        "source": d.source,
        "method": d.method,
        "authority": d.authority,
        "path": d.path,
        "status": d.status,
        "class": d.class(),
        "rules": rules,
    })
    .to_string()
}

/// `ts_ns` (Unix time in nanoseconds) as `2026-12-01T20:34:09.123Z`.
pub fn rfc3339(ts_ns: u64) -> String {
    let secs = ts_ns / 1_000_000_000;
    let millis = (ts_ns / 1_000_000) % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `/metrics`, Prometheus text format 0.0.4.
pub fn metrics(s: &Snapshot) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = write!(
            out,
            "# HELP oob_mirror_node_{name} {help}\n# TYPE oob_mirror_node_{name} {kind}\noob_mirror_node_{name} {value}\n"
        );
    };
    metric(
        "records_received_total",
        "counter",
        "Records received in batches.",
        s.records_received.to_string(),
    );
    metric(
        "extproc_streams_total",
        "counter",
        "ext_proc streams received whole.",
        s.extproc_streams.to_string(),
    );
    metric(
        "decode_errors_total",
        "counter",
        "Batches and ext_proc streams refused because they did not decode.",
        s.decode_errors.to_string(),
    );
    metric(
        "batches_refused_busy_total",
        "counter",
        "Batches answered 503 (streams UNAVAILABLE) because analysis was behind.",
        s.batches_refused_busy.to_string(),
    );
    metric(
        "exchanges_analysed_total",
        "counter",
        "Exchanges run through the rules.",
        s.exchanges_analysed.to_string(),
    );
    metric(
        "exchanges_with_attacks_total",
        "counter",
        "Analysed exchanges where at least one rule matched.",
        s.exchanges_with_attacks.to_string(),
    );
    metric(
        "exchanges_paired_total",
        "counter",
        "Requests analysed with their response.",
        s.paired.to_string(),
    );
    metric(
        "unpaired_requests_total",
        "counter",
        "Requests analysed alone (response late or pushed out).",
        s.unpaired_requests.to_string(),
    );
    metric(
        "unpaired_responses_total",
        "counter",
        "Responses dropped because their request never came.",
        s.unpaired_responses.to_string(),
    );
    metric(
        "bodies_decompression_cut_total",
        "counter",
        "Decompressed bodies cut at the size bound.",
        s.bodies_cut.to_string(),
    );
    metric(
        "analysis_seconds_total",
        "counter",
        "Time spent analysing, all threads.",
        format!("{:.6}", s.analysis_ns as f64 / 1e9),
    );
    metric(
        "analysis_queue",
        "gauge",
        "Exchanges waiting for analysis.",
        s.queued.to_string(),
    );
    metric(
        "pairing_pending",
        "gauge",
        "Records waiting for their other half.",
        s.pending.to_string(),
    );
    metric(
        "analysis_threads",
        "gauge",
        "Analysis threads.",
        s.threads.to_string(),
    );
    out.push_str("# HELP oob_mirror_node_rule_matches_total Exchanges matched, by rule id.\n# TYPE oob_mirror_node_rule_matches_total counter\n");
    for (id, n) in &s.matches_by_rule {
        let _ = writeln!(
            out,
            "oob_mirror_node_rule_matches_total{{rule=\"{id}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::RuleMatch;

    fn detection() -> Detection {
        Detection {
            id: "r1".into(),
            request_id: Some("req-1".into()),
            ts_ns: 1_764_621_249_123_456_789,
            source: Some("10.0.0.9:5000".into()),
            method: "GET".into(),
            authority: Some("api".into()),
            path: "/q?<script>".into(),
            status: Some(200),
            rules: vec![RuleMatch {
                id: 941100,
                msg: "XSS Attack Detected via libinjection".into(),
                severity: "CRITICAL".into(),
                data: "<script>".into(),
            }],
            classes: vec!["xss"],
            exchange: crate::pairing::Exchange::default(),
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_764_621_249_123_456_789),
            "2025-12-01T20:34:09.123Z"
        );
    }

    #[test]
    fn json_line_fields() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&detection())).unwrap();
        assert_eq!(v["id"], "r1");
        assert_eq!(v["request_id"], "req-1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["rules"][0]["id"], 941100);
        assert_eq!(v["rules"][0]["severity"], "CRITICAL");
        assert_eq!(v["path"], "/q?<script>");
        assert_eq!(v["class"], "xss");
    }

    #[test]
    fn escapes() {
        assert_eq!(
            esc("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
    }

    #[test]
    fn metrics_text() {
        let mut s = Snapshot {
            exchanges_analysed: 3,
            ..Snapshot::default()
        };
        s.matches_by_rule.insert(942100, 2);
        let text = metrics(&s);
        assert!(text.contains("oob_mirror_node_exchanges_analysed_total 3\n"));
        assert!(text.contains("oob_mirror_node_rule_matches_total{rule=\"942100\"} 2\n"));
    }
}
