//! Per-worker batch queue: records are appended to an open batch that is sealed when it holds
//! `max_records` or would pass `max_bytes`; at most `max_queue_bytes` wait and at most
//! `max_inflight` batches are out at once. Past those bounds a record is refused, never
//! blocked on and never grown into memory.

use crate::config::BatchConfig;
use std::collections::VecDeque;

/// A batch ready to be sent: concatenated msgpack records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub records: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Refused: the queue holds `max_queue_bytes` already. The caller counts the drop.
    QueueFull,
}

#[derive(Debug)]
pub struct BatchQueue {
    max_records: u64,
    max_bytes: usize,
    max_queue_bytes: usize,
    flush_ms: u64,
    max_inflight: u64,
    sealed: VecDeque<Batch>,
    open: Batch,
    /// When the oldest record of the open batch was queued, to flush it after `flush_ms`.
    open_since_ms: u64,
    queued_bytes: usize,
    queued_records: u64,
    inflight: u64,
    inflight_records: u64,
    /// Emptied batch bodies kept for reuse, so steady traffic allocates no new buffers.
    spare: Vec<Vec<u8>>,
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

impl BatchQueue {
    pub fn new(config: &BatchConfig) -> Self {
        BatchQueue {
            max_records: config.max_records,
            max_bytes: to_usize(config.max_bytes),
            max_queue_bytes: to_usize(config.max_queue_bytes),
            flush_ms: config.flush_ms,
            max_inflight: config.max_inflight,
            sealed: VecDeque::new(),
            open: Batch::default(),
            open_since_ms: 0,
            queued_bytes: 0,
            queued_records: 0,
            inflight: 0,
            inflight_records: 0,
            spare: Vec::new(),
        }
    }

    /// Queues one encoded record at time `now_ms`.
    pub fn push(&mut self, record: &[u8], now_ms: u64) -> Push {
        self.push_with(now_ms, |out| out.extend_from_slice(record))
    }

    /// Queues the record `encode` appends, written straight into the open batch: a record's
    /// bytes (a 64 KiB body) are copied once fewer than through a buffer of its own.
    pub fn push_with(&mut self, now_ms: u64, encode: impl FnOnce(&mut Vec<u8>)) -> Push {
        if self.open.records == 0 && self.open.body.capacity() == 0 {
            self.open.body = self.spare.pop().unwrap_or_default();
        }
        let start = self.open.body.len();
        encode(&mut self.open.body);
        let len = self.open.body.len().saturating_sub(start);
        if self.queued_bytes.saturating_add(len) > self.max_queue_bytes {
            self.open.body.truncate(start);
            return Push::QueueFull;
        }
        if self.open.records > 0 && self.open.body.len() > self.max_bytes {
            // The record would pass the batch's budget: it starts the next batch (one copy of
            // one record per batch sealed this way).
            let mut next = self.spare.pop().unwrap_or_default();
            next.extend_from_slice(self.open.body.get(start..).unwrap_or_default());
            self.open.body.truncate(start);
            let full = std::mem::replace(
                &mut self.open,
                Batch {
                    body: next,
                    records: 0,
                },
            );
            self.sealed.push_back(full);
        }
        if self.open.records == 0 {
            self.open_since_ms = now_ms;
        }
        self.open.records += 1;
        self.queued_bytes += len;
        self.queued_records += 1;
        if self.open.records >= self.max_records || self.open.body.len() >= self.max_bytes {
            self.seal();
        }
        Push::Queued
    }

    fn seal(&mut self) {
        let body = self.spare.pop().unwrap_or_default();
        let full = std::mem::replace(&mut self.open, Batch { body, records: 0 });
        self.sealed.push_back(full);
    }

    /// A full batch is waiting (or the open one is older than `flush_ms`) and a slot is free.
    pub fn has_ready(&self, now_ms: u64) -> bool {
        self.inflight < self.max_inflight && (!self.sealed.is_empty() || self.open_is_due(now_ms))
    }

    fn open_is_due(&self, now_ms: u64) -> bool {
        self.open.records > 0 && now_ms.saturating_sub(self.open_since_ms) >= self.flush_ms
    }

    /// Takes the next batch to send if one is due and an in-flight slot is free; the caller
    /// must then report its fate with `finish` (or `abandon` when dispatch failed).
    pub fn take_ready(&mut self, now_ms: u64) -> Option<Batch> {
        if !self.has_ready(now_ms) {
            return None;
        }
        if self.sealed.is_empty() {
            self.seal();
        }
        let batch = self.sealed.pop_front()?;
        self.queued_bytes = self.queued_bytes.saturating_sub(batch.body.len());
        self.queued_records = self.queued_records.saturating_sub(batch.records);
        self.inflight += 1;
        self.inflight_records += batch.records;
        Some(batch)
    }

    /// The batch taken by `take_ready` with `records` records is done (acknowledged or failed).
    pub fn finish(&mut self, records: u64) {
        self.inflight = self.inflight.saturating_sub(1);
        self.inflight_records = self.inflight_records.saturating_sub(records);
    }

    /// Hands a sent batch's buffer back for reuse.
    pub fn recycle(&mut self, mut body: Vec<u8>) {
        // Keep only a few, and never one grown past the batch budget by an oversized record.
        if self.spare.len() < 2 && body.capacity() <= self.max_bytes.saturating_mul(2) {
            body.clear();
            self.spare.push(body);
        }
    }

    pub fn queued_bytes(&self) -> u64 {
        self.queued_bytes as u64
    }

    pub fn max_queue_bytes(&self) -> u64 {
        self.max_queue_bytes as u64
    }

    pub fn queued_records(&self) -> u64 {
        self.queued_records
    }

    pub fn inflight(&self) -> u64 {
        self.inflight
    }

    pub fn inflight_records(&self) -> u64 {
        self.inflight_records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn config(max_records: u64, max_bytes: u64, max_queue_bytes: u64) -> BatchConfig {
        BatchConfig {
            max_records,
            max_bytes,
            flush_ms: 10,
            max_queue_bytes,
            max_inflight: 2,
        }
    }

    #[test]
    fn seals_at_max_records() {
        let mut q = BatchQueue::new(&config(2, 100, 1000));
        assert_eq!(q.push(b"aa", 0), Push::Queued);
        assert!(!q.has_ready(0));
        q.push(b"bb", 0);
        assert!(q.has_ready(0));
        let batch = q.take_ready(0).unwrap();
        assert_eq!(batch.body, b"aabb");
        assert_eq!(batch.records, 2);
        assert_eq!(q.queued_records(), 0);
        assert_eq!(q.inflight_records(), 2);
        q.finish(2);
        assert_eq!(q.inflight(), 0);
        assert_eq!(q.inflight_records(), 0);
    }

    #[test]
    fn seals_before_passing_max_bytes() {
        let mut q = BatchQueue::new(&config(100, 5, 1000));
        q.push(b"abc", 0);
        q.push(b"def", 0);
        let first = q.take_ready(0).unwrap();
        assert_eq!(first.body, b"abc");
        assert!(q.take_ready(0).is_none(), "the open batch is not due yet");
        let second = q.take_ready(10).unwrap();
        assert_eq!(second.body, b"def");
    }

    #[test]
    fn an_oversized_record_travels_alone() {
        let mut q = BatchQueue::new(&config(100, 4, 1000));
        q.push(b"a", 0);
        q.push(b"0123456789", 0);
        assert_eq!(q.take_ready(0).unwrap().body, b"a");
        assert_eq!(q.take_ready(0).unwrap().body, b"0123456789");
    }

    #[test]
    fn open_batch_flushes_after_flush_ms() {
        let mut q = BatchQueue::new(&config(100, 100, 1000));
        q.push(b"a", 100);
        q.push(b"b", 105);
        assert!(q.take_ready(109).is_none());
        assert_eq!(q.take_ready(110).unwrap().body, b"ab");
        q.push(b"c", 200);
        assert!(q.take_ready(205).is_none(), "the clock restarts per batch");
    }

    #[test]
    fn refuses_past_max_queue_bytes() {
        let mut q = BatchQueue::new(&config(100, 4, 6));
        assert_eq!(q.push(b"abc", 0), Push::Queued);
        assert_eq!(q.push(b"def", 0), Push::Queued);
        assert_eq!(q.push(b"g", 0), Push::QueueFull);
        assert_eq!(q.queued_bytes(), 6);
        q.take_ready(0).unwrap();
        assert_eq!(
            q.push(b"g", 0),
            Push::Queued,
            "room again once a batch left"
        );
    }

    #[test]
    fn a_refused_or_moved_record_leaves_the_open_batch_as_it_was() {
        let mut q = BatchQueue::new(&config(100, 5, 8));
        assert_eq!(
            q.push_with(0, |out| out.extend_from_slice(b"abc")),
            Push::Queued
        );
        let refused = q.push_with(0, |out| out.extend_from_slice(b"0123456"));
        assert_eq!(refused, Push::QueueFull);
        // Encoded in place past max_bytes: the record starts the next batch, whole.
        assert_eq!(
            q.push_with(0, |out| out.extend_from_slice(b"def")),
            Push::Queued
        );
        assert_eq!(q.take_ready(0).unwrap().body, b"abc");
        assert_eq!(q.take_ready(10).unwrap().body, b"def");
        assert_eq!((q.queued_bytes(), q.queued_records()), (0, 0));
    }

    #[test]
    fn respects_max_inflight() {
        let mut q = BatchQueue::new(&config(1, 100, 1000));
        for record in [b"a", b"b", b"c"] {
            q.push(record, 0);
        }
        assert!(q.take_ready(0).is_some());
        assert!(q.take_ready(0).is_some());
        assert!(q.take_ready(0).is_none());
        q.finish(1);
        assert_eq!(q.take_ready(0).unwrap().body, b"c");
    }

    #[test]
    fn buffers_are_reused() {
        let mut q = BatchQueue::new(&config(1, 100, 1000));
        q.push(b"a", 0);
        let batch = q.take_ready(0).unwrap();
        let capacity = batch.body.capacity();
        q.finish(1);
        q.recycle(batch.body);
        q.push(b"b", 0);
        assert!(q.take_ready(0).unwrap().body.capacity() >= capacity);
    }
}
