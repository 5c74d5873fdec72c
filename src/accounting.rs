//! Exact per-worker accounting of every record and batch. The filter publishes these to
//! Envoy metrics; the invariant `captured = sent + dropped + queued + in flight` holds at
//! every publication.

/// Why a batch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFailure {
    /// The node's connection was reset or refused before it answered.
    Reset,
    /// No answer within `node.timeout_ms`.
    Timeout,
    /// The node answered with a status other than 2xx.
    Status,
    /// Envoy refused the call synchronously (unknown cluster, circuit breaker overflow).
    Dispatch,
}

/// Monotonic counters, each published as an Envoy counter of the same name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub records_captured: u64,
    pub records_sent: u64,
    pub records_dropped_queue_full: u64,
    pub records_dropped_node_failure: u64,
    pub batches_sent: u64,
    pub batches_failed_reset: u64,
    pub batches_failed_timeout: u64,
    pub batches_failed_status: u64,
    pub batches_failed_dispatch: u64,
    pub bytes_sent: u64,
    pub bodies_truncated: u64,
    pub bodies_truncated_budget: u64,
    pub backoffs: u64,
    // Exchanges not mirrored, by reason (src/select.rs), and bodies only counted.
    pub exchanges_skipped_scope: u64,
    pub exchanges_skipped_sampling: u64,
    pub exchanges_skipped_rate_limit: u64,
    pub exchanges_shed: u64,
    pub bodies_skipped_content_type: u64,
    // ext_proc protocol: one gRPC stream per exchange.
    pub extproc_exchanges: u64,
    pub extproc_streams_opened: u64,
    pub extproc_streams_completed: u64,
    pub extproc_streams_failed: u64,
    pub extproc_streams_cancelled: u64,
    pub extproc_streams_refused: u64,
    pub extproc_dropped_max_streams: u64,
    pub extproc_dropped_backoff: u64,
    pub extproc_messages_sent: u64,
    pub extproc_bytes_sent: u64,
}

/// Current levels, each published as an Envoy gauge of the same name.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    pub queued_bytes: u64,
    pub queued_records: u64,
    pub inflight_records: u64,
    /// The VM's linear memory. Only the filter layer can read it; the core leaves it 0.
    pub wasm_memory_bytes: u64,
    /// ext_proc exchanges admitted whose stream has not ended yet.
    pub extproc_streams_active: u64,
}

impl Counters {
    /// Names and values in one fixed order, shared by metric definition and publication.
    pub fn named(&self) -> [(&'static str, u64); 28] {
        [
            ("records_captured", self.records_captured),
            ("records_sent", self.records_sent),
            (
                "records_dropped_queue_full",
                self.records_dropped_queue_full,
            ),
            (
                "records_dropped_node_failure",
                self.records_dropped_node_failure,
            ),
            ("batches_sent", self.batches_sent),
            ("batches_failed_reset", self.batches_failed_reset),
            ("batches_failed_timeout", self.batches_failed_timeout),
            ("batches_failed_status", self.batches_failed_status),
            ("batches_failed_dispatch", self.batches_failed_dispatch),
            ("bytes_sent", self.bytes_sent),
            ("bodies_truncated", self.bodies_truncated),
            ("bodies_truncated_budget", self.bodies_truncated_budget),
            ("backoffs", self.backoffs),
            ("exchanges_skipped_scope", self.exchanges_skipped_scope),
            (
                "exchanges_skipped_sampling",
                self.exchanges_skipped_sampling,
            ),
            (
                "exchanges_skipped_rate_limit",
                self.exchanges_skipped_rate_limit,
            ),
            ("exchanges_shed", self.exchanges_shed),
            (
                "bodies_skipped_content_type",
                self.bodies_skipped_content_type,
            ),
            ("extproc_exchanges", self.extproc_exchanges),
            ("extproc_streams_opened", self.extproc_streams_opened),
            ("extproc_streams_completed", self.extproc_streams_completed),
            ("extproc_streams_failed", self.extproc_streams_failed),
            ("extproc_streams_cancelled", self.extproc_streams_cancelled),
            ("extproc_streams_refused", self.extproc_streams_refused),
            (
                "extproc_dropped_max_streams",
                self.extproc_dropped_max_streams,
            ),
            ("extproc_dropped_backoff", self.extproc_dropped_backoff),
            ("extproc_messages_sent", self.extproc_messages_sent),
            ("extproc_bytes_sent", self.extproc_bytes_sent),
        ]
    }

    pub fn records_dropped(&self) -> u64 {
        self.records_dropped_queue_full + self.records_dropped_node_failure
    }

    pub fn batch_acknowledged(&mut self, records: u64, bytes: u64) {
        self.batches_sent += 1;
        self.records_sent += records;
        self.bytes_sent += bytes;
    }

    pub fn batch_failed(&mut self, records: u64, failure: BatchFailure) {
        self.records_dropped_node_failure += records;
        let counter = match failure {
            BatchFailure::Reset => &mut self.batches_failed_reset,
            BatchFailure::Timeout => &mut self.batches_failed_timeout,
            BatchFailure::Status => &mut self.batches_failed_status,
            BatchFailure::Dispatch => &mut self.batches_failed_dispatch,
        };
        *counter += 1;
    }
}

impl Gauges {
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("queued_bytes", self.queued_bytes),
            ("queued_records", self.queued_records),
            ("inflight_records", self.inflight_records),
            ("wasm_memory_bytes", self.wasm_memory_bytes),
            ("extproc_streams_active", self.extproc_streams_active),
        ]
    }
}

/// Whether every captured record is accounted for (the filter's own tests check this after
/// every step; the end-to-end tests check the published metrics).
#[cfg(test)]
pub(crate) fn balanced(counters: &Counters, gauges: &Gauges) -> bool {
    counters.records_captured
        == counters.records_sent
            + counters.records_dropped()
            + gauges.queued_records
            + gauges.inflight_records
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn failures_are_counted_by_reason_and_records_dropped() {
        let mut counters = Counters {
            records_captured: 10,
            ..Counters::default()
        };
        counters.batch_acknowledged(4, 400);
        counters.batch_failed(3, BatchFailure::Timeout);
        counters.batch_failed(1, BatchFailure::Dispatch);
        counters.records_dropped_queue_full += 1;
        let gauges = Gauges {
            queued_records: 1,
            ..Gauges::default()
        };
        assert!(balanced(&counters, &gauges));
        assert_eq!(counters.batches_failed_timeout, 1);
        assert_eq!(counters.batches_failed_dispatch, 1);
        assert_eq!(counters.bytes_sent, 400);
        assert!(!balanced(&counters, &Gauges::default()));
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = Counters::default()
            .named()
            .iter()
            .map(|(n, _)| *n)
            .collect();
        names.extend(Gauges::default().named().iter().map(|(n, _)| *n));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
