//! The per-worker shipping logic, host-free: encodes captured records into the batch queue,
//! decides when a batch goes out (thresholds, flush timer, in-flight bound, backoff) and
//! accounts for every record's fate. The filter layer only moves bytes to and from Envoy.

use crate::accounting::{BatchFailure, Counters, Gauges};
use crate::backoff::{Backoff, Permit};
use crate::batch::{shard_of, Batch, BatchQueue, Push};
use crate::body::BodyCapture;
use crate::config::Config;
use crate::encode::{encode_request_marked, encode_response_marked};
use crate::failure_log::{FailureLog, Reason};
use crate::record::{RequestRecord, ResponseRecord};
use crate::redact::{Mark, Place, Redactor};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy)]
struct InFlight {
    records: u64,
    bytes: u64,
    sent_ms: u64,
}

/// How a dispatched batch ended, as far as the host tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// No response headers: the call was reset or timed out.
    NoResponse,
    /// Envoy itself answered that the node could not be reached (connect failure, reset,
    /// no healthy host).
    EnvoyReset,
    /// Envoy itself answered that the node did not answer in time.
    EnvoyTimeout,
    /// The node answered with this `:status` (0 if unreadable).
    Status(u32),
}

/// Envoy answers a failed call to the node with its own 503/504 local reply; these body
/// texts (Envoy's, stable across versions) tell it from a node that answered 503 itself.
const ENVOY_RESET_BODIES: [&[u8]; 2] = [
    b"upstream connect error or disconnect/reset before headers",
    b"no healthy upstream",
];
const ENVOY_TIMEOUT_BODY: &[u8] = b"upstream request timeout";

/// The longest body prefix `Reply::classify` looks at.
pub const REPLY_BODY_PREFIX: usize = 64;

impl Reply {
    /// Classifies a reply from its `:status` (None: no headers at all) and the first bytes
    /// of its body (read only for a non-2xx status).
    pub fn classify(status: Option<u32>, body_prefix: &[u8]) -> Reply {
        match status {
            None => Reply::NoResponse,
            Some(503 | 504) if body_prefix.starts_with(ENVOY_TIMEOUT_BODY) => Reply::EnvoyTimeout,
            Some(503)
                if ENVOY_RESET_BODIES
                    .iter()
                    .any(|b| body_prefix.starts_with(b)) =>
            {
                Reply::EnvoyReset
            }
            Some(status) => Reply::Status(status),
        }
    }
}

#[derive(Debug)]
pub struct Shipper {
    timeout_ms: u64,
    queue: BatchQueue,
    backoff: Backoff,
    counters: Counters,
    inflight: HashMap<u32, InFlight>,
    /// Failures and recovery, for Envoy's log.
    pub log: FailureLog,
    /// Secrets are replaced before a record is encoded; `None` when redaction is off.
    redactor: Option<Redactor>,
}

impl Shipper {
    pub fn new(config: &Config, redactor: Option<Redactor>) -> Self {
        Shipper {
            timeout_ms: config.node.timeout_ms,
            queue: BatchQueue::new(&config.batch, config.node.shards),
            backoff: Backoff::default(),
            counters: Counters::default(),
            inflight: HashMap::new(),
            log: FailureLog::new("batches", "records", &config.node.cluster),
            redactor,
        }
    }

    /// Redacts the record in place, then queues it.
    pub fn capture_request(&mut self, record: &mut RequestRecord, now_ms: u64) {
        let mut marks = Vec::new();
        if let Some(r) = &self.redactor {
            marks = r.record(&mut record.headers, &mut record.trailers, &mut record.body);
            let mut spans = Vec::new();
            if let Some(path) = r.path(&record.path, &mut spans) {
                record.path = path;
            }
            marks.extend(spans.into_iter().map(|span| Mark {
                place: Place::Path,
                index: 0,
                span,
            }));
        }
        let shard = shard_of(record.id.as_bytes(), self.queue.shards());
        let push = self.queue.push_with(shard, now_ms, |out| {
            encode_request_marked(record, &marks, out)
        });
        self.admit(&record.body, push);
    }

    pub fn capture_response(&mut self, record: &mut ResponseRecord, now_ms: u64) {
        let mut marks = Vec::new();
        if let Some(r) = &self.redactor {
            marks = r.record(&mut record.headers, &mut record.trailers, &mut record.body);
        }
        // The request's shard: the two records of an exchange share their id.
        let shard = shard_of(record.id.as_bytes(), self.queue.shards());
        let push = self.queue.push_with(shard, now_ms, |out| {
            encode_response_marked(record, &marks, out)
        });
        self.admit(&record.body, push);
    }

    fn admit(&mut self, body: &BodyCapture, push: Push) {
        self.counters.records_captured += 1;
        if body.skipped_by_type() {
            self.counters.bodies_skipped_content_type += 1;
        } else if body.truncated() {
            self.counters.bodies_truncated += 1;
        }
        if body.cut_by_budget() {
            self.counters.bodies_truncated_budget += 1;
        }
        if push == Push::QueueFull {
            self.counters.records_dropped_queue_full += 1;
        }
    }

    /// The next batch to dispatch, if any is due and allowed. Report its fate with
    /// `dispatched` (then `reply`) or `dispatch_failed`.
    pub fn next_batch(&mut self, now_ms: u64) -> Option<Batch> {
        match self.backoff.permit(now_ms, self.queue.inflight()) {
            Permit::Wait => None,
            Permit::Send => self.queue.take_ready(now_ms),
            Permit::Probe => {
                let batch = self.queue.take_ready(now_ms)?;
                self.backoff.probe_sent();
                Some(batch)
            }
        }
    }

    /// The host accepted the batch under `token`; its buffer can be reused.
    pub fn dispatched(&mut self, token: u32, batch: Batch, now_ms: u64) {
        let entry = InFlight {
            records: batch.records,
            bytes: batch.body.len() as u64,
            sent_ms: now_ms,
        };
        self.inflight.insert(token, entry);
        self.queue.recycle(batch.body);
    }

    /// The host refused the batch synchronously (`reason`: no such cluster, or otherwise).
    pub fn dispatch_failed(&mut self, batch: Batch, why: (Reason, String), now_ms: u64) {
        self.queue.finish(batch.records);
        self.fail(batch.records, BatchFailure::Dispatch, why, now_ms);
        self.queue.recycle(batch.body);
    }

    /// The reply (or failure) of the batch sent under `token`. Unknown tokens are ignored.
    pub fn reply(&mut self, token: u32, reply: Reply, now_ms: u64) {
        let Some(sent) = self.inflight.remove(&token) else {
            return;
        };
        self.queue.finish(sent.records);
        match reply {
            Reply::Status(status) if (200..300).contains(&status) => {
                self.counters.batch_acknowledged(sent.records, sent.bytes);
                self.backoff.succeeded();
                self.log.succeeded();
            }
            Reply::Status(status) => {
                let why = (Reason::Answer, format!(" (HTTP {status})"));
                self.fail(sent.records, BatchFailure::Status, why, now_ms);
            }
            Reply::EnvoyReset => {
                let why = (Reason::Connection, String::new());
                self.fail(sent.records, BatchFailure::Reset, why, now_ms);
            }
            Reply::EnvoyTimeout => {
                let why = (Reason::Timeout, self.after());
                self.fail(sent.records, BatchFailure::Timeout, why, now_ms);
            }
            Reply::NoResponse => {
                // The host reports a timeout and a reset alike; the elapsed time tells them apart.
                let timed_out = now_ms.saturating_sub(sent.sent_ms) >= self.timeout_ms;
                let (failure, why) = if timed_out {
                    (BatchFailure::Timeout, (Reason::Timeout, self.after()))
                } else {
                    (BatchFailure::Reset, (Reason::Connection, String::new()))
                };
                self.fail(sent.records, failure, why, now_ms);
            }
        }
    }

    fn after(&self) -> String {
        format!(" (after {} ms)", self.timeout_ms)
    }

    fn fail(&mut self, records: u64, failure: BatchFailure, why: (Reason, String), now_ms: u64) {
        self.log.failed(why.0, &why.1, records, now_ms);
        self.counters.batch_failed(records, failure);
        if self.backoff.failed(now_ms) {
            self.counters.backoffs += 1;
        }
    }

    /// The host cancelled every batch in flight and will never report on them (a configuration
    /// that goes away takes its calls with it): their records count as dropped, their batches
    /// as reset. No backoff and no log line: the node did nothing wrong. Returns the records.
    pub fn abandon_inflight(&mut self) -> u64 {
        let mut records = 0;
        for (_, sent) in self.inflight.drain() {
            self.queue.finish(sent.records);
            self.counters
                .batch_failed(sent.records, BatchFailure::Reset);
            records += sent.records;
        }
        records
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Bytes waiting in the queue and its bound: how full it is, for shedding.
    pub fn queue_fill(&self) -> (u64, u64) {
        (self.queue.queued_bytes(), self.queue.max_queue_bytes())
    }

    /// Makes every queued record due now (a root that is going ships at once).
    pub fn flush_all(&mut self) {
        self.queue.seal_all();
    }

    /// Nothing queued (open or sealed) and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queue.queued_records() == 0 && self.queue.inflight_records() == 0
    }

    pub fn gauges(&self) -> Gauges {
        Gauges {
            queued_bytes: self.queue.queued_bytes(),
            queued_records: self.queue.queued_records(),
            inflight_records: self.queue.inflight_records(),
            ..Gauges::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::balanced;
    use crate::backoff::{FAILURES_BEFORE_BACKOFF, FIRST_BACKOFF_MS};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config(max_records: u64) -> Config {
        let mut config = Config::parse(br#"{"node":{"cluster":"n","timeout_ms":100}}"#).unwrap();
        config.batch.max_records = max_records;
        config.batch.flush_ms = 10;
        config.batch.max_inflight = 2;
        config
    }

    fn request(id: &str) -> RequestRecord {
        RequestRecord {
            id: id.into(),
            complete: true,
            ..RequestRecord::default()
        }
    }

    fn assert_balanced(s: &Shipper) {
        assert!(
            balanced(s.counters(), &s.gauges()),
            "{:?} {:?}",
            s.counters(),
            s.gauges()
        );
    }

    #[test]
    fn abandoned_batches_in_flight_are_dropped_without_backoff() {
        let mut s = Shipper::new(&config(2), None);
        for id in ["a", "b"] {
            s.capture_request(&mut request(id), 0);
            s.capture_request(&mut request(id), 0);
        }
        let first = s.next_batch(0).unwrap();
        s.dispatched(1, first, 0);
        let second = s.next_batch(0).unwrap();
        s.dispatched(2, second, 0);
        assert_eq!(s.gauges().inflight_records, 4);
        assert_eq!(s.abandon_inflight(), 4);
        assert_eq!(s.gauges().inflight_records, 0);
        assert_eq!(s.counters().records_dropped_node_failure, 4);
        assert_eq!(s.counters().batches_failed_reset, 2);
        assert_eq!(s.counters().backoffs, 0);
        assert!(s.log.take().is_empty());
        assert!(s.is_idle());
        assert_balanced(&s);
        // A reply that comes anyway is ignored, and new records ship at once.
        s.reply(1, Reply::Status(204), 0);
        assert_eq!(s.counters().records_sent, 0);
        s.capture_request(&mut request("c"), 0);
        s.capture_request(&mut request("c"), 0);
        assert_eq!(s.next_batch(0).map(|b| b.records), Some(2));
    }

    #[test]
    fn a_full_batch_ships_and_is_acknowledged() {
        let mut s = Shipper::new(&config(2), None);
        s.capture_request(&mut request("a"), 0);
        assert!(s.next_batch(0).is_none(), "one record, not yet due");
        s.capture_response(
            &mut ResponseRecord {
                id: "a".into(),
                ..ResponseRecord::default()
            },
            0,
        );
        let batch = s.next_batch(0).unwrap();
        assert_eq!(batch.records, 2);
        let bytes = batch.body.len() as u64;
        s.dispatched(7, batch, 0);
        assert_balanced(&s);
        assert_eq!(s.gauges().inflight_records, 2);
        s.reply(7, Reply::Status(204), 1);
        assert_eq!(s.counters().records_sent, 2);
        assert_eq!(s.counters().batches_sent, 1);
        assert_eq!(s.counters().bytes_sent, bytes);
        assert_eq!(s.gauges(), Gauges::default());
        assert_balanced(&s);
        s.reply(7, Reply::Status(204), 1);
        assert_eq!(s.counters().batches_sent, 1, "a token counts once");
    }

    #[test]
    fn failures_are_classified_and_records_dropped() {
        let mut s = Shipper::new(&config(1), None);
        for id in ["a", "b", "c", "d"] {
            s.capture_request(&mut request(id), 0);
        }
        let b1 = s.next_batch(0).unwrap();
        s.dispatched(1, b1, 0);
        let b2 = s.next_batch(0).unwrap();
        s.dispatched(2, b2, 0);
        assert!(s.next_batch(0).is_none(), "in-flight bound");
        s.reply(1, Reply::NoResponse, 5);
        s.reply(2, Reply::NoResponse, 100);
        let b3 = s.next_batch(100).unwrap();
        s.dispatch_failed(b3, (Reason::UnknownCluster, String::new()), 100);
        let c = *s.counters();
        assert_eq!(c.batches_failed_reset, 1);
        assert_eq!(c.batches_failed_timeout, 1);
        assert_eq!(c.batches_failed_dispatch, 1);
        assert_eq!(c.records_dropped_node_failure, 3);
        assert_eq!(c.backoffs, 1);
        assert_balanced(&s);
        assert!(s.next_batch(100).is_none(), "backing off");
        let probe = s.next_batch(100 + FIRST_BACKOFF_MS).unwrap();
        s.dispatched(3, probe, 100 + FIRST_BACKOFF_MS);
        s.reply(3, Reply::Status(500), 101 + FIRST_BACKOFF_MS);
        assert_eq!(s.counters().batches_failed_status, 1);
        assert_eq!(s.counters().backoffs, 2);
        assert_balanced(&s);
    }

    #[test]
    fn envoy_local_replies_are_told_from_the_nodes_own() {
        assert_eq!(Reply::classify(None, b""), Reply::NoResponse);
        assert_eq!(Reply::classify(Some(204), b""), Reply::Status(204));
        assert_eq!(
            Reply::classify(Some(504), b"upstream request timeout"),
            Reply::EnvoyTimeout
        );
        assert_eq!(
            Reply::classify(
                Some(503),
                b"upstream connect error or disconnect/reset before headers. reset reason: x"
            ),
            Reply::EnvoyReset
        );
        assert_eq!(
            Reply::classify(Some(503), b"no healthy upstream"),
            Reply::EnvoyReset
        );
        assert_eq!(Reply::classify(Some(503), b"busy"), Reply::Status(503));
        assert_eq!(Reply::classify(Some(504), b""), Reply::Status(504));
        assert!(REPLY_BODY_PREFIX >= ENVOY_RESET_BODIES[0].len());

        let mut s = Shipper::new(&config(1), None);
        for id in ["a", "b", "c"] {
            s.capture_request(&mut request(id), 0);
        }
        let b = s.next_batch(0).unwrap();
        s.dispatched(1, b, 0);
        let b = s.next_batch(0).unwrap();
        s.dispatched(2, b, 0);
        s.reply(1, Reply::EnvoyTimeout, 1);
        s.reply(2, Reply::EnvoyReset, 1);
        assert_eq!(s.counters().batches_failed_timeout, 1);
        assert_eq!(s.counters().batches_failed_reset, 1);
        assert_eq!(s.counters().batches_failed_status, 0);
    }

    #[test]
    fn queue_full_drops_are_counted() {
        let mut config = config(1000);
        config.batch.max_bytes = 4096;
        config.batch.max_queue_bytes = 4096;
        let mut s = Shipper::new(&config, None);
        let mut big = request("big");
        big.body = BodyCapture::new(3000);
        big.body.add(3000, &[b'x'; 3000]);
        s.capture_request(&mut big, 0);
        s.capture_request(&mut big, 0);
        assert_eq!(s.counters().records_captured, 2);
        assert_eq!(s.counters().records_dropped_queue_full, 1);
        assert_balanced(&s);
        assert_eq!(FAILURES_BEFORE_BACKOFF, 3);
    }

    #[test]
    fn skipped_bodies_are_counted_apart_from_truncated_ones() {
        let mut s = Shipper::new(&config(10), None);
        let mut r = request("s");
        r.body = BodyCapture::skipped();
        r.body.add(500, b"");
        s.capture_request(&mut r, 0);
        r.body = BodyCapture::skipped();
        s.capture_request(&mut r, 0);
        assert_eq!(s.counters().bodies_skipped_content_type, 1);
        assert_eq!(s.counters().bodies_truncated, 0);
        assert_eq!(s.queue_fill().1, 8 << 20);
        assert!(s.queue_fill().0 > 0);
    }

    #[test]
    fn truncated_bodies_are_counted() {
        let mut s = Shipper::new(&config(10), None);
        let mut r = request("t");
        r.body = BodyCapture::new(1);
        r.body.add(2, b"ab");
        s.capture_request(&mut r, 0);
        assert_eq!(s.counters().bodies_truncated, 1);
        assert_eq!(s.counters().bodies_truncated_budget, 0);
        r.body = BodyCapture::new(5);
        r.body.add(4, b"a");
        s.capture_request(&mut r, 0);
        assert_eq!(s.counters().bodies_truncated, 2);
        assert_eq!(s.counters().bodies_truncated_budget, 1);
    }

    fn response(id: &str) -> ResponseRecord {
        ResponseRecord {
            id: id.into(),
            complete: true,
            ..ResponseRecord::default()
        }
    }

    /// The ids of the records in a batch body, in order (every record's `id` string: the
    /// encoder writes the key `id` then the value, a fixstr).
    fn ids_in(body: &[u8]) -> Vec<String> {
        let mut ids = Vec::new();
        let mut rest = body;
        while let Ok(value) = rmpv::decode::read_value(&mut rest) {
            let id = value
                .as_map()
                .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some("id")))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_default()
                .to_owned();
            ids.push(id);
        }
        ids
    }

    #[test]
    fn sharded_pairs_travel_together_and_the_accounting_stays_exact() {
        let mut config = config(8);
        config.node.shards = 16;
        config.batch.max_inflight = 4;
        let mut s = Shipper::new(&config, None);
        let ids: Vec<String> = (0..200)
            .map(|i| format!("oob-00000000000000ab-{i}"))
            .collect();
        let mut shard_of_id = std::collections::HashMap::new();
        let mut token = 0;
        let mut now = 0;
        for (i, id) in ids.iter().enumerate() {
            s.capture_request(&mut request(id), now);
            if i % 3 == 0 {
                now += 1;
            }
            s.capture_response(&mut response(id), now);
            assert_balanced(&s);
            while let Some(batch) = s.next_batch(now) {
                for record_id in ids_in(&batch.body) {
                    let shard = *shard_of_id.entry(record_id).or_insert(batch.shard);
                    assert_eq!(shard, batch.shard, "both records of an exchange, one shard");
                }
                token += 1;
                // Every fifth batch fails: its records are dropped, and counted.
                let reply = if token % 5 == 0 {
                    Reply::Status(503)
                } else {
                    Reply::Status(204)
                };
                s.dispatched(token, batch, now);
                assert_balanced(&s);
                s.reply(token, reply, now);
                assert_balanced(&s);
            }
        }
        // The timer flushes what is left, shard by shard.
        now += 10;
        while let Some(batch) = s.next_batch(now) {
            token += 1;
            for record_id in ids_in(&batch.body) {
                let shard = *shard_of_id.entry(record_id).or_insert(batch.shard);
                assert_eq!(shard, batch.shard);
            }
            s.dispatched(token, batch, now);
            s.reply(token, Reply::Status(204), now);
        }
        assert_balanced(&s);
        assert_eq!(
            s.gauges(),
            Gauges::default(),
            "nothing left queued or in flight"
        );
        let c = *s.counters();
        assert_eq!(c.records_captured, 400);
        assert_eq!(c.records_sent + c.records_dropped_node_failure, 400);
        assert!(c.batches_failed_status > 0 && c.records_dropped_node_failure > 0);
        assert_eq!(shard_of_id.len(), 200, "every exchange reached a batch");
        let used: std::collections::HashSet<u32> = shard_of_id.values().copied().collect();
        assert_eq!(used.len(), 16, "200 exchanges use all 16 shards");
    }

    #[test]
    fn sharded_queue_full_drops_are_counted_once() {
        let mut config = config(1000);
        config.node.shards = 4;
        config.batch.max_bytes = 4096;
        config.batch.max_queue_bytes = 4096;
        let mut s = Shipper::new(&config, None);
        let mut captured = 0;
        for i in 0..40 {
            let mut big = request(&format!("id-{i}"));
            big.body = BodyCapture::new(500);
            big.body.add(500, &[b'x'; 500]);
            s.capture_request(&mut big, 0);
            captured += 1;
            assert_balanced(&s);
        }
        let c = *s.counters();
        assert_eq!(c.records_captured, captured);
        assert!(c.records_dropped_queue_full > 0);
        assert_eq!(
            c.records_dropped_queue_full + s.gauges().queued_records,
            captured
        );
        assert!(s.queue_fill().0 <= 4096);
    }
}
