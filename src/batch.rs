//! Per-worker batch queue: records are appended to an open batch that is sealed when it holds
//! `max_records` or would pass `max_bytes`; at most `max_queue_bytes` wait and at most
//! `max_inflight` batches are out at once. Past those bounds a record is refused, never
//! blocked on and never grown into memory.
//!
//! With `node.shards` above 1 there is one open batch per shard, each sealed on its own size
//! and its own `flush_ms`; the sealed batches, the byte bound and the in-flight bound are the
//! worker's, shared by every shard, so the bounds are those of one queue. A record's shard is
//! [`shard_of`] its exchange id: both records of an exchange travel in batches of one shard.

use crate::config::{BatchConfig, NodeConfig};
use std::collections::VecDeque;

/// A batch ready to be sent: concatenated msgpack records.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub body: Vec<u8>,
    pub records: u64,
    /// The shard every record of the batch belongs to (0 when there is one).
    pub shard: u32,
}

/// Largest `node.shards`.
pub const MAX_SHARDS: u32 = 64;

/// The shard of the exchange `id`, of `shards`: FNV-1a (64 bits) of its bytes, modulo
/// `shards`. One shard needs no hash.
pub fn shard_of(id: &[u8], shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(shards)).unwrap_or(0)
}

/// What each shard's batches are sent with, when there are several: the `:authority`
/// `shard-N.{authority}` (a wasm call's hash key in Envoy) and the `x-oob-mirror-shard` value
/// `N`. None for one shard, whose batches go with `authority` and no shard header, as before.
pub fn shard_targets(authority: &str, shards: u32) -> Vec<(String, String)> {
    if shards <= 1 {
        return Vec::new();
    }
    (0..shards)
        .map(|n| (format!("shard-{n}.{authority}"), n.to_string()))
        .collect()
}

/// The headers a batch goes out with (docs/wire-format.md): the node's path, the `:authority`
/// of the batch's shard (see [`shard_targets`]), the msgpack type, the wire format's version,
/// the record count, the shard's number when there are several, then the configured
/// `node.headers` (`node_headers`, their values already resolved).
pub fn batch_headers<'a>(
    node: &'a NodeConfig,
    targets: &'a [(String, String)],
    batch: &Batch,
    records: &'a str,
    node_headers: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    let shard = usize::try_from(batch.shard)
        .ok()
        .and_then(|i| targets.get(i));
    let authority = shard.map_or(node.authority.as_str(), |(a, _)| a.as_str());
    let mut headers = Vec::with_capacity(7 + node_headers.len());
    headers.extend([
        (":method", "POST"),
        (":path", node.path.as_str()),
        (":authority", authority),
        ("content-type", "application/msgpack"),
        ("x-oob-mirror-version", "1"),
        ("x-oob-mirror-records", records),
    ]);
    if let Some((_, number)) = shard {
        headers.push(("x-oob-mirror-shard", number.as_str()));
    }
    headers.extend(node_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    headers
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
    /// One open batch per shard, at the shard's index.
    open: Vec<Open>,
    queued_bytes: usize,
    queued_records: u64,
    inflight: u64,
    inflight_records: u64,
    /// Emptied batch bodies kept for reuse, so steady traffic allocates no new buffers.
    spare: Vec<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Open {
    batch: Batch,
    /// When the oldest record of the batch was queued, to flush it after `flush_ms`.
    since_ms: u64,
}

fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

impl BatchQueue {
    /// One open batch for each of `shards` (at least 1).
    pub fn new(config: &BatchConfig, shards: u32) -> Self {
        let open = (0..shards.max(1))
            .map(|shard| Open {
                batch: Batch {
                    shard,
                    ..Batch::default()
                },
                since_ms: 0,
            })
            .collect();
        BatchQueue {
            max_records: config.max_records,
            max_bytes: to_usize(config.max_bytes),
            max_queue_bytes: to_usize(config.max_queue_bytes),
            flush_ms: config.flush_ms,
            max_inflight: config.max_inflight,
            sealed: VecDeque::new(),
            open,
            queued_bytes: 0,
            queued_records: 0,
            inflight: 0,
            inflight_records: 0,
            spare: Vec::new(),
        }
    }

    /// Queues one encoded record of `shard` at time `now_ms`.
    pub fn push(&mut self, shard: u32, record: &[u8], now_ms: u64) -> Push {
        self.push_with(shard, now_ms, |out| out.extend_from_slice(record))
    }

    /// How many shards there are.
    pub fn shards(&self) -> u32 {
        u32::try_from(self.open.len()).unwrap_or(u32::MAX)
    }

    /// Queues the record `encode` appends to the open batch of `shard` (taken modulo the
    /// shards), written straight into it: a record's bytes (a 64 KiB body) are copied once
    /// fewer than through a buffer of its own.
    pub fn push_with(
        &mut self,
        shard: u32,
        now_ms: u64,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Push {
        let index = to_usize(u64::from(shard)) % self.open.len().max(1);
        let Some(open) = self.open.get_mut(index) else {
            // No open batch at all (never: `new` makes at least one): refused, and counted.
            return Push::QueueFull;
        };
        let batch = &mut open.batch;
        if batch.records == 0 && batch.body.capacity() == 0 {
            batch.body = self.spare.pop().unwrap_or_default();
        }
        let start = batch.body.len();
        encode(&mut batch.body);
        let len = batch.body.len().saturating_sub(start);
        if self.queued_bytes.saturating_add(len) > self.max_queue_bytes {
            batch.body.truncate(start);
            return Push::QueueFull;
        }
        if batch.records > 0 && batch.body.len() > self.max_bytes {
            // The record would pass the batch's budget: it starts the next batch (one copy of
            // one record per batch sealed this way).
            let mut next = self.spare.pop().unwrap_or_default();
            next.extend_from_slice(batch.body.get(start..).unwrap_or_default());
            batch.body.truncate(start);
            let full = std::mem::replace(
                batch,
                Batch {
                    body: next,
                    records: 0,
                    shard: batch.shard,
                },
            );
            self.sealed.push_back(full);
        }
        if batch.records == 0 {
            open.since_ms = now_ms;
        }
        batch.records += 1;
        self.queued_bytes += len;
        self.queued_records += 1;
        if batch.records >= self.max_records || batch.body.len() >= self.max_bytes {
            self.seal(index);
        }
        Push::Queued
    }

    fn seal(&mut self, index: usize) {
        let Some(open) = self.open.get_mut(index) else {
            return;
        };
        let body = self.spare.pop().unwrap_or_default();
        let shard = open.batch.shard;
        let full = std::mem::replace(
            &mut open.batch,
            Batch {
                body,
                records: 0,
                shard,
            },
        );
        self.sealed.push_back(full);
    }

    /// Seals every open batch that holds records, whatever its age: a root that is going
    /// ships what it has at once.
    pub fn seal_all(&mut self) {
        for index in 0..self.open.len() {
            if self.open.get(index).is_some_and(|o| o.batch.records > 0) {
                self.seal(index);
            }
        }
    }

    /// A full batch is waiting (or an open one is older than `flush_ms`) and a slot is free.
    pub fn has_ready(&self, now_ms: u64) -> bool {
        self.inflight < self.max_inflight
            && (!self.sealed.is_empty() || self.oldest_due(now_ms).is_some())
    }

    /// The open batch that has waited longest, if it is due (`flush_ms` after its first
    /// record): each shard flushes on its own timer, the oldest first.
    fn oldest_due(&self, now_ms: u64) -> Option<usize> {
        let mut oldest: Option<(usize, u64)> = None;
        for (index, open) in self.open.iter().enumerate() {
            if open.batch.records > 0 && oldest.is_none_or(|(_, since)| open.since_ms < since) {
                oldest = Some((index, open.since_ms));
            }
        }
        let (index, since) = oldest?;
        (now_ms.saturating_sub(since) >= self.flush_ms).then_some(index)
    }

    /// Takes the next batch to send if one is due and an in-flight slot is free; the caller
    /// must then report its fate with `finish` (or `abandon` when dispatch failed).
    pub fn take_ready(&mut self, now_ms: u64) -> Option<Batch> {
        if self.inflight >= self.max_inflight {
            return None;
        }
        if self.sealed.is_empty() {
            let index = self.oldest_due(now_ms)?;
            self.seal(index);
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
        let mut q = BatchQueue::new(&config(2, 100, 1000), 1);
        assert_eq!(q.push(0, b"aa", 0), Push::Queued);
        assert!(!q.has_ready(0));
        q.push(0, b"bb", 0);
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
    fn seal_all_makes_every_open_batch_due_at_once() {
        let mut q = BatchQueue::new(&config(100, 100, 1000), 3);
        q.push(0, b"a", 0);
        q.push(2, b"c", 0);
        assert!(!q.has_ready(0), "not due before flush_ms");
        q.seal_all();
        let first = q.take_ready(0).unwrap();
        let second = q.take_ready(0).unwrap();
        assert_eq!((first.shard, first.body.as_slice()), (0, &b"a"[..]));
        assert_eq!((second.shard, second.body.as_slice()), (2, &b"c"[..]));
        assert!(q.take_ready(0).is_none(), "the empty shard is not sent");
        assert_eq!(q.queued_records(), 0);
        assert_eq!(q.inflight_records(), 2);
    }

    #[test]
    fn seals_before_passing_max_bytes() {
        let mut q = BatchQueue::new(&config(100, 5, 1000), 1);
        q.push(0, b"abc", 0);
        q.push(0, b"def", 0);
        let first = q.take_ready(0).unwrap();
        assert_eq!(first.body, b"abc");
        assert!(q.take_ready(0).is_none(), "the open batch is not due yet");
        let second = q.take_ready(10).unwrap();
        assert_eq!(second.body, b"def");
    }

    #[test]
    fn an_oversized_record_travels_alone() {
        let mut q = BatchQueue::new(&config(100, 4, 1000), 1);
        q.push(0, b"a", 0);
        q.push(0, b"0123456789", 0);
        assert_eq!(q.take_ready(0).unwrap().body, b"a");
        assert_eq!(q.take_ready(0).unwrap().body, b"0123456789");
    }

    #[test]
    fn open_batch_flushes_after_flush_ms() {
        let mut q = BatchQueue::new(&config(100, 100, 1000), 1);
        q.push(0, b"a", 100);
        q.push(0, b"b", 105);
        assert!(q.take_ready(109).is_none());
        assert_eq!(q.take_ready(110).unwrap().body, b"ab");
        q.push(0, b"c", 200);
        assert!(q.take_ready(205).is_none(), "the clock restarts per batch");
    }

    #[test]
    fn refuses_past_max_queue_bytes() {
        let mut q = BatchQueue::new(&config(100, 4, 6), 1);
        assert_eq!(q.push(0, b"abc", 0), Push::Queued);
        assert_eq!(q.push(0, b"def", 0), Push::Queued);
        assert_eq!(q.push(0, b"g", 0), Push::QueueFull);
        assert_eq!(q.queued_bytes(), 6);
        q.take_ready(0).unwrap();
        assert_eq!(
            q.push(0, b"g", 0),
            Push::Queued,
            "room again once a batch left"
        );
    }

    #[test]
    fn a_refused_or_moved_record_leaves_the_open_batch_as_it_was() {
        let mut q = BatchQueue::new(&config(100, 5, 8), 1);
        assert_eq!(
            q.push_with(0, 0, |out| out.extend_from_slice(b"abc")),
            Push::Queued
        );
        let refused = q.push_with(0, 0, |out| out.extend_from_slice(b"0123456"));
        assert_eq!(refused, Push::QueueFull);
        // Encoded in place past max_bytes: the record starts the next batch, whole.
        assert_eq!(
            q.push_with(0, 0, |out| out.extend_from_slice(b"def")),
            Push::Queued
        );
        assert_eq!(q.take_ready(0).unwrap().body, b"abc");
        assert_eq!(q.take_ready(10).unwrap().body, b"def");
        assert_eq!((q.queued_bytes(), q.queued_records()), (0, 0));
    }

    #[test]
    fn respects_max_inflight() {
        let mut q = BatchQueue::new(&config(1, 100, 1000), 1);
        for record in [b"a", b"b", b"c"] {
            q.push(0, record, 0);
        }
        assert!(q.take_ready(0).is_some());
        assert!(q.take_ready(0).is_some());
        assert!(q.take_ready(0).is_none());
        q.finish(1);
        assert_eq!(q.take_ready(0).unwrap().body, b"c");
    }

    #[test]
    fn buffers_are_reused() {
        let mut q = BatchQueue::new(&config(1, 100, 1000), 1);
        q.push(0, b"a", 0);
        let batch = q.take_ready(0).unwrap();
        let capacity = batch.body.capacity();
        q.finish(1);
        q.recycle(batch.body);
        q.push(0, b"b", 0);
        assert!(q.take_ready(0).unwrap().body.capacity() >= capacity);
    }

    #[test]
    fn one_shard_needs_no_hash_and_ids_spread_over_shards() {
        assert_eq!(shard_of(b"oob-0000000000000001-1", 1), 0);
        assert_eq!(shard_of(b"", 16), shard_of(b"", 16));
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(shard_of(b"a", 16), (0xaf63_dc4c_8601_ec8c_u64 % 16) as u32);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            let id = format!("oob-5f0c7a8e3d1b4c5e-{i}");
            let shard = shard_of(id.as_bytes(), 16);
            assert_eq!(
                shard,
                shard_of(id.as_bytes(), 16),
                "the same id, the same shard"
            );
            counts[shard as usize] += 1;
        }
        // 1,000 expected in each: a fair hash stays well within 15%.
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
        assert!((0..1000).all(|i| shard_of(format!("x{i}").as_bytes(), MAX_SHARDS) < MAX_SHARDS));
    }

    #[test]
    fn shards_ride_in_the_authority_and_a_header() {
        assert!(shard_targets("oob-mirror", 1).is_empty());
        let targets = shard_targets("node.example", 3);
        assert_eq!(
            targets,
            [
                ("shard-0.node.example".to_owned(), "0".to_owned()),
                ("shard-1.node.example".to_owned(), "1".to_owned()),
                ("shard-2.node.example".to_owned(), "2".to_owned()),
            ]
        );
        assert_eq!(shard_targets("a", MAX_SHARDS).len(), 64);
    }

    #[test]
    fn batch_headers_by_shard() {
        let node =
            crate::config::Config::parse(br#"{"node":{"cluster":"n","authority":"a.example"}}"#)
                .unwrap()
                .node;
        let batch = |shard| Batch {
            body: Vec::new(),
            records: 2,
            shard,
        };
        let extra = [("authorization".to_owned(), "Bearer t".to_owned())];
        let expected = |authority, shard: Option<&'static str>| {
            let mut h = vec![
                (":method", "POST"),
                (":path", node.path.as_str()),
                (":authority", authority),
                ("content-type", "application/msgpack"),
                ("x-oob-mirror-version", "1"),
                ("x-oob-mirror-records", "2"),
            ];
            h.extend(shard.map(|n| ("x-oob-mirror-shard", n)));
            h.push(("authorization", "Bearer t"));
            h
        };
        assert_eq!(
            batch_headers(&node, &[], &batch(0), "2", &extra),
            expected("a.example", None)
        );
        let targets = shard_targets("a.example", 3);
        assert_eq!(
            batch_headers(&node, &targets, &batch(2), "2", &extra),
            expected("shard-2.a.example", Some("2"))
        );
    }

    #[test]
    fn each_shard_has_its_own_open_batch() {
        let mut q = BatchQueue::new(&config(2, 100, 1000), 3);
        assert_eq!(q.shards(), 3);
        q.push(0, b"a0", 0);
        q.push(2, b"c0", 0);
        q.push(0, b"a1", 0);
        let first = q.take_ready(0).unwrap();
        assert_eq!(
            (first.shard, first.body.as_slice(), first.records),
            (0, &b"a0a1"[..], 2)
        );
        assert!(
            q.take_ready(0).is_none(),
            "shard 2's batch is neither full nor due"
        );
        q.push(2, b"c1", 0);
        let second = q.take_ready(0).unwrap();
        assert_eq!((second.shard, second.body.as_slice()), (2, &b"c0c1"[..]));
        q.finish(2);
        q.finish(2);
        // A shard beyond the count is taken modulo it.
        q.push(4, b"b0", 0);
        q.push(1, b"b1", 0);
        assert_eq!(q.take_ready(0).unwrap().body, b"b0b1");
    }

    #[test]
    fn each_shard_flushes_on_its_own_timer_the_oldest_first() {
        let mut q = BatchQueue::new(&config(100, 100, 1000), 16);
        q.push(5, b"x", 100);
        q.push(9, b"y", 104);
        q.push(5, b"z", 106);
        assert!(!q.has_ready(109));
        assert!(q.take_ready(109).is_none());
        assert!(q.has_ready(110));
        let first = q.take_ready(110).unwrap();
        assert_eq!((first.shard, first.body.as_slice()), (5, &b"xz"[..]));
        assert!(q.take_ready(113).is_none(), "shard 9 started at 104");
        let second = q.take_ready(114).unwrap();
        assert_eq!((second.shard, second.body.as_slice()), (9, &b"y"[..]));
        assert_eq!((q.queued_records(), q.queued_bytes()), (0, 0));
    }

    #[test]
    fn the_bounds_are_the_workers_whatever_the_shards() {
        let mut q = BatchQueue::new(&config(1, 100, 6), 4);
        assert_eq!(q.push(0, b"abc", 0), Push::Queued);
        assert_eq!(q.push(1, b"def", 0), Push::Queued);
        assert_eq!(
            q.push(2, b"g", 0),
            Push::QueueFull,
            "one byte bound for all shards"
        );
        assert_eq!((q.queued_records(), q.queued_bytes()), (2, 6));
        let mut q = BatchQueue::new(&config(1, 100, 1000), 4);
        for shard in 0..4 {
            q.push(shard, b"r", 0);
        }
        assert!(q.take_ready(0).is_some());
        assert!(q.take_ready(0).is_some());
        assert!(
            q.take_ready(0).is_none(),
            "one in-flight bound for all shards"
        );
        assert_eq!((q.inflight(), q.inflight_records()), (2, 2));
        assert_eq!(q.queued_records(), 2);
        q.finish(1);
        assert!(q.take_ready(0).is_some());
    }

    #[test]
    fn an_oversized_record_keeps_its_shard() {
        let mut q = BatchQueue::new(&config(100, 4, 1000), 2);
        q.push(1, b"a", 0);
        q.push(1, b"0123456789", 0);
        let first = q.take_ready(0).unwrap();
        let second = q.take_ready(0).unwrap();
        assert_eq!((first.shard, first.body.as_slice()), (1, &b"a"[..]));
        assert_eq!(
            (second.shard, second.body.as_slice()),
            (1, &b"0123456789"[..])
        );
    }
}
