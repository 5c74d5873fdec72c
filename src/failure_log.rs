//! Says in Envoy's log when sending to the node fails, and when it works again, without
//! flooding the log: at most one warning per reason per minute per worker, each with the
//! number of records (or exchanges) dropped since the previous warning, and one info line when
//! delivery resumes. Host-free: the filter layer only prints the lines.

/// Shortest gap between two warnings for the same reason.
pub const LOG_INTERVAL_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Info,
}

/// Why delivery failed, as the log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Envoy has no cluster by the configured name (a typo in `node.cluster`).
    UnknownCluster,
    /// Envoy refused the call for another reason (circuit breaker, bad arguments).
    Refused,
    /// The connection to the node failed or was reset.
    Connection,
    /// The node did not answer within `node.timeout_ms`.
    Timeout,
    /// The node answered, but not with success.
    Answer,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::UnknownCluster => "Envoy has no cluster by that name",
            Reason::Refused => "Envoy refused the call",
            Reason::Connection => "connection to the node failed or was reset",
            Reason::Timeout => "the node did not answer in time",
            Reason::Answer => "the node answered with an error",
        }
    }
}

#[derive(Debug)]
pub struct FailureLog {
    /// `batches` or `ext_proc streams`.
    what: &'static str,
    /// `records` or `exchanges`.
    unit: &'static str,
    cluster: String,
    /// When each reason was last written.
    last: [Option<u64>; 5],
    dropped: u64,
    failing: bool,
    lines: Vec<(Level, String)>,
}

impl FailureLog {
    pub fn new(what: &'static str, unit: &'static str, cluster: &str) -> Self {
        FailureLog {
            what,
            unit,
            cluster: cluster.to_owned(),
            last: [None; 5],
            dropped: 0,
            failing: false,
            lines: Vec::new(),
        }
    }

    /// A delivery failed; `detail` completes the reason (an HTTP or gRPC status, a timeout).
    pub fn failed(&mut self, reason: Reason, detail: &str, dropped: u64, now_ms: u64) {
        self.dropped = self.dropped.saturating_add(dropped);
        self.failing = true;
        let Some(last) = self.last.get_mut(reason as usize) else {
            return;
        };
        if last.is_some_and(|at| now_ms < at.saturating_add(LOG_INTERVAL_MS)) {
            return;
        }
        *last = Some(now_ms);
        let line = format!(
            "oob-mirror: {} to cluster '{}' fail: {}{detail}; {} {} dropped since the last such line",
            self.what,
            self.cluster,
            reason.text(),
            self.dropped,
            self.unit
        );
        self.dropped = 0;
        self.lines.push((Level::Warn, line));
    }

    /// A delivery succeeded: after failures, one line says so, and the next failure is written
    /// at once.
    pub fn succeeded(&mut self) {
        if !self.failing {
            return;
        }
        self.failing = false;
        self.last = [None; 5];
        let line = format!(
            "oob-mirror: {} to cluster '{}' delivered again",
            self.what, self.cluster
        );
        self.lines.push((Level::Info, line));
    }

    /// The lines to print, oldest first.
    pub fn take(&mut self) -> Vec<(Level, String)> {
        std::mem::take(&mut self.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn one_warning_per_reason_per_minute_with_the_drops_between() {
        let mut log = FailureLog::new("batches", "records", "node_typo");
        log.failed(Reason::UnknownCluster, "", 3, 1000);
        assert_eq!(
            log.take(),
            [(
                Level::Warn,
                "oob-mirror: batches to cluster 'node_typo' fail: Envoy has no cluster by that \
                 name; 3 records dropped since the last such line"
                    .to_owned()
            )]
        );
        log.failed(Reason::UnknownCluster, "", 5, 2000);
        log.failed(Reason::UnknownCluster, "", 5, 60_999);
        assert!(log.take().is_empty());
        // Another reason is written at once.
        log.failed(Reason::Answer, " (HTTP 500)", 1, 61_000);
        log.failed(Reason::UnknownCluster, "", 2, 61_000);
        let lines = log.take();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0]
                .1
                .ends_with("with an error (HTTP 500); 11 records dropped since the last such line"),
            "{lines:?}"
        );
        assert!(
            lines[1]
                .1
                .ends_with("; 2 records dropped since the last such line"),
            "{lines:?}"
        );
    }

    #[test]
    fn recovery_is_said_once_and_rearms_the_warnings() {
        let mut log = FailureLog::new("ext_proc streams", "exchanges", "n");
        log.succeeded();
        assert!(log.take().is_empty());
        log.failed(Reason::Timeout, "", 1, 0);
        log.succeeded();
        log.succeeded();
        let lines = log.take();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            (
                Level::Info,
                "oob-mirror: ext_proc streams to cluster 'n' delivered again".to_owned()
            )
        );
        log.failed(Reason::Timeout, "", 1, 10);
        assert_eq!(log.take().len(), 1);
    }
}
