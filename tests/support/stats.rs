//! The filter's metrics, read from Envoy's admin `/stats?format=json`.
//!
//! The filter defines `oob_mirror.<name>`; Envoy shows them with a prefix of
//! its own (e.g. `wasmcustom.`), so metrics are matched on their suffix and
//! summed over whatever matches.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use super::envoy::Envoy;
use super::wait::poll_until;

pub const COUNTERS: &[&str] = &[
    "records_captured",
    "records_sent",
    "records_dropped_queue_full",
    "records_dropped_node_failure",
    "batches_sent",
    "batches_failed_reset",
    "batches_failed_timeout",
    "batches_failed_status",
    "batches_failed_dispatch",
    "bytes_sent",
    "bodies_truncated",
    "bodies_truncated_budget",
    "backoffs",
    "extproc_exchanges",
    "extproc_streams_opened",
    "extproc_streams_completed",
    "extproc_streams_failed",
    "extproc_streams_cancelled",
    "extproc_streams_refused",
    "extproc_dropped_max_streams",
    "extproc_dropped_backoff",
    "extproc_messages_sent",
    "extproc_bytes_sent",
];

pub const GAUGES: &[&str] = &[
    "queued_bytes",
    "queued_records",
    "inflight_records",
    "wasm_memory_bytes",
    "extproc_streams_active",
];

#[derive(Clone, Default)]
pub struct Stats {
    /// Every stat whose name contains `oob_mirror.`, as Envoy named it.
    pub raw: Vec<(String, i128)>,
}

impl Stats {
    /// Sum of the stats whose names end with `oob_mirror.<metric>`.
    pub fn get(&self, metric: &str) -> i128 {
        let suffix = format!("oob_mirror.{metric}");
        self.raw
            .iter()
            .filter(|(name, _)| name.ends_with(&suffix))
            .map(|(_, v)| *v)
            .sum()
    }

    /// Whether any stat named `...oob_mirror.<metric>` exists at all.
    pub fn has(&self, metric: &str) -> bool {
        let suffix = format!("oob_mirror.{metric}");
        self.raw.iter().any(|(name, _)| name.ends_with(&suffix))
    }

    pub fn dropped(&self) -> i128 {
        self.get("records_dropped_queue_full") + self.get("records_dropped_node_failure")
    }

    pub fn batches_failed(&self) -> i128 {
        self.get("batches_failed_reset")
            + self.get("batches_failed_timeout")
            + self.get("batches_failed_status")
            + self.get("batches_failed_dispatch")
    }

    /// records_captured = records_sent + dropped (both kinds) + queued_records
    /// + inflight_records.
    pub fn check_invariant(&self) -> Result<(), String> {
        let captured = self.get("records_captured");
        let rhs = self.get("records_sent")
            + self.dropped()
            + self.get("queued_records")
            + self.get("inflight_records");
        if captured == rhs {
            Ok(())
        } else {
            Err(format!(
                "accounting invariant broken: records_captured {captured} != \
                 sent + dropped + queued + inflight = {rhs}\n{self:?}"
            ))
        }
    }

    pub fn assert_invariant(&self) {
        if let Err(e) = self.check_invariant() {
            panic!("{e}");
        }
    }

    /// Both records of each of `exchanges` exchanges were captured, and every one is sent
    /// or dropped: the invariant holds with nothing queued or in flight.
    pub fn assert_settled(&self, exchanges: i128) {
        self.assert_invariant();
        assert_eq!(self.get("records_captured"), 2 * exchanges, "{self:?}");
        assert_eq!(self.get("queued_records"), 0, "{self:?}");
        assert_eq!(self.get("inflight_records"), 0, "{self:?}");
        assert_eq!(self.get("queued_bytes"), 0, "{self:?}");
    }

    /// The invariant holds and nothing is queued or in flight.
    /// ext_proc mode: every exchange is in a stream that ended (by outcome), was dropped (by
    /// reason), or is still active.
    pub fn check_extproc_invariant(&self) -> Result<(), String> {
        let accounted: i128 = [
            "extproc_streams_completed",
            "extproc_streams_failed",
            "extproc_streams_cancelled",
            "extproc_streams_refused",
            "extproc_dropped_max_streams",
            "extproc_dropped_backoff",
            "extproc_streams_active",
        ]
        .iter()
        .map(|name| self.get(name))
        .sum();
        let exchanges = self.get("extproc_exchanges");
        if exchanges == accounted {
            Ok(())
        } else {
            Err(format!(
                "extproc_exchanges {exchanges} != accounted {accounted}: {self:?}"
            ))
        }
    }

    pub fn is_drained(&self) -> bool {
        self.check_invariant().is_ok()
            && self.check_extproc_invariant().is_ok()
            && self.get("extproc_streams_active") == 0
            && self.get("queued_records") == 0
            && self.get("inflight_records") == 0
    }
}

impl fmt::Debug for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "oob_mirror metrics (summed over workers):")?;
        for name in COUNTERS.iter().chain(GAUGES) {
            let present = if self.has(name) { "" } else { " (absent)" };
            writeln!(f, "  {name} = {}{present}", self.get(name))?;
        }
        Ok(())
    }
}

/// Reads the filter's metrics now.
pub fn read(envoy: &Envoy) -> Stats {
    let resp = envoy.admin_get("/stats?format=json&filter=oob_mirror");
    assert_eq!(resp.status, 200, "admin /stats: {}", resp.body_str());
    let v: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("admin /stats is not JSON ({e}): {}", resp.body_str()));
    let mut raw = Vec::new();
    if let Some(stats) = v.get("stats").and_then(Value::as_array) {
        for s in stats {
            let (Some(name), Some(value)) = (s.get("name").and_then(Value::as_str), s.get("value"))
            else {
                continue; // histograms
            };
            if !name.contains("oob_mirror.") {
                continue;
            }
            let value = value
                .as_i64()
                .map(i128::from)
                .or_else(|| value.as_u64().map(i128::from))
                .unwrap_or(0);
            raw.push((name.to_string(), value));
        }
    }
    Stats { raw }
}

/// Polls until the invariant holds with nothing queued or in flight, and
/// `extra` holds too; fails the test with the last metrics otherwise.
pub fn wait_drained_and(envoy: &Envoy, timeout: Duration, extra: impl Fn(&Stats) -> bool) -> Stats {
    let mut last = Stats::default();
    let got = poll_until(timeout, || {
        last = read(envoy);
        (last.is_drained() && extra(&last)).then(|| last.clone())
    });
    match got {
        Some(s) => s,
        None => panic!(
            "the filter's metrics did not settle (invariant with queued = inflight = 0) \
             within {timeout:?}; last:\n{last:?}\n{}",
            last.check_invariant().err().unwrap_or_default()
        ),
    }
}

/// Polls until the invariant holds with nothing queued or in flight.
pub fn wait_drained(envoy: &Envoy, timeout: Duration) -> Stats {
    wait_drained_and(envoy, timeout, |_| true)
}

/// One of Envoy's own counters or gauges by its exact name (e.g.
/// `cluster.oob_mirror_node.upstream_cx_connect_fail`); fails the test when
/// Envoy has no such stat.
pub fn envoy_stat(envoy: &Envoy, name: &str) -> i128 {
    // The filter is a regex: its dots match any character, so look for the
    // exact name in what it returns.
    let resp = envoy.admin_get(&format!("/stats?format=json&filter=^{name}$"));
    assert_eq!(resp.status, 200, "admin /stats: {}", resp.body_str());
    let v: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("admin /stats is not JSON ({e}): {}", resp.body_str()));
    v.get("stats")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
        .and_then(|s| s.get("value"))
        .and_then(|v| {
            v.as_i64()
                .map(i128::from)
                .or_else(|| v.as_u64().map(i128::from))
        })
        .unwrap_or_else(|| panic!("Envoy has no stat named {name}: {}", resp.body_str()))
}
