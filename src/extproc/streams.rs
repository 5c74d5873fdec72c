//! One worker's ext_proc streams: which exchange has which gRPC stream, what waits for a stream
//! to be opened, deadlines, backoff and exact accounting. Host-free: the filter passes the host
//! calls in as closures.
//!
//! Only a root context may open a stream (Envoy delivers a stream's events to the context that
//! opened it, and a stream context is gone long before the node closes its stream), but any
//! context may send on an open one. So an exchange's messages go straight out once its stream is
//! open; until then they wait here, and the first one to wait asks the root to be woken.

use crate::accounting::Counters;
use crate::backoff::{Backoff, Permit};
use crate::failure_log::{FailureLog, Reason};
use std::collections::HashMap;

/// gRPC status OK: the node closed the stream normally.
const GRPC_OK: u32 = 0;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_UNAVAILABLE: u32 = 14;

#[derive(Debug, Default)]
struct Exchange {
    token: Option<u32>,
    /// Messages captured before the stream was open, in order.
    pending: Vec<Vec<u8>>,
    /// The exchange has ended: the stream is half-closed once open.
    finished: bool,
    /// Half-closed, and cancelled unless the node closes it by then.
    deadline_ms: Option<u64>,
}

/// Where a message goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Send it on this stream now (then report with [`Streams::sent`]).
    Send(u32, Vec<u8>),
    /// Held until the root opens the stream; `wake` asks the caller to wake the root.
    Held { wake: bool },
    /// The exchange's stream has already ended (failed, cancelled or never admitted).
    Gone,
}

#[derive(Debug)]
pub struct Streams {
    max_streams: usize,
    timeout_ms: u64,
    next_key: u64,
    exchanges: HashMap<u64, Exchange>,
    tokens: HashMap<u32, u64>,
    unopened: Vec<u64>,
    wake_pending: bool,
    backoff: Backoff,
    counters: Counters,
    /// Failures and recovery, for Envoy's log.
    pub log: FailureLog,
}

impl Streams {
    pub fn new(max_streams: u64, timeout_ms: u64, cluster: &str) -> Self {
        Streams {
            max_streams: usize::try_from(max_streams).unwrap_or(usize::MAX),
            timeout_ms,
            next_key: 0,
            exchanges: HashMap::new(),
            tokens: HashMap::new(),
            unopened: Vec::new(),
            wake_pending: false,
            backoff: Backoff::default(),
            counters: Counters::default(),
            log: FailureLog::new("ext_proc streams", "exchanges", cluster),
        }
    }

    /// A new exchange: its key, or `None` when it is dropped (bound on streams, or backoff).
    pub fn begin(&mut self, now_ms: u64) -> Option<u64> {
        self.counters.extproc_exchanges += 1;
        if self.exchanges.len() >= self.max_streams {
            self.counters.extproc_dropped_max_streams += 1;
            return None;
        }
        match self.backoff.permit(now_ms, self.tokens.len() as u64) {
            Permit::Send => {}
            Permit::Probe => self.backoff.probe_sent(),
            Permit::Wait => {
                self.counters.extproc_dropped_backoff += 1;
                return None;
            }
        }
        let key = self.next_key;
        self.next_key += 1;
        self.exchanges.insert(key, Exchange::default());
        self.unopened.push(key);
        Some(key)
    }

    pub fn deliver(&mut self, key: u64, message: Vec<u8>) -> Delivery {
        let Some(exchange) = self.exchanges.get_mut(&key) else {
            return Delivery::Gone;
        };
        match exchange.token {
            Some(token) => Delivery::Send(token, message),
            None => {
                exchange.pending.push(message);
                let wake = !self.wake_pending;
                self.wake_pending = true;
                Delivery::Held { wake }
            }
        }
    }

    /// The outcome of sending a message of `bytes` on the exchange's stream. A refused send
    /// ends the stream: the token to cancel is returned.
    pub fn sent(&mut self, key: u64, bytes: usize, ok: bool, now_ms: u64) -> Option<u32> {
        if ok {
            self.counters.extproc_messages_sent += 1;
            self.counters.extproc_bytes_sent += bytes as u64;
            return None;
        }
        let token = self.exchanges.get(&key)?.token?;
        self.end(
            token,
            Err((Reason::Refused, " (sending a message)")),
            now_ms,
        );
        Some(token)
    }

    /// The exchange has ended: the stream to half-close now, if it is open (else it is closed as
    /// soon as the root opens it).
    pub fn finish(&mut self, key: u64, now_ms: u64) -> Option<u32> {
        let exchange = self.exchanges.get_mut(&key)?;
        if exchange.finished {
            return None;
        }
        exchange.finished = true;
        let token = exchange.token?;
        exchange.deadline_ms = Some(now_ms.saturating_add(self.timeout_ms));
        Some(token)
    }

    /// Root only: opens a stream for every exchange that waits for one and sends what it holds.
    pub fn flush(
        &mut self,
        now_ms: u64,
        mut open: impl FnMut() -> Result<u32, (Reason, String)>,
        mut send: impl FnMut(u32, &[u8]) -> bool,
        mut close: impl FnMut(u32) -> bool,
    ) {
        self.wake_pending = false;
        for key in std::mem::take(&mut self.unopened) {
            let Some(exchange) = self.exchanges.get_mut(&key) else {
                continue;
            };
            let token = match open() {
                Ok(token) => token,
                Err((reason, detail)) => {
                    self.exchanges.remove(&key);
                    self.counters.extproc_streams_refused += 1;
                    self.log.failed(reason, &detail, 1, now_ms);
                    if self.backoff.failed(now_ms) {
                        self.counters.backoffs += 1;
                    }
                    continue;
                }
            };
            self.counters.extproc_streams_opened += 1;
            exchange.token = Some(token);
            self.tokens.insert(token, key);
            for message in std::mem::take(&mut exchange.pending) {
                let ok = send(token, &message);
                if let Some(token) = self.sent(key, message.len(), ok, now_ms) {
                    let _ = close(token);
                    break;
                }
            }
            let deadline = now_ms.saturating_add(self.timeout_ms);
            let finished = self.exchanges.get_mut(&key).filter(|e| e.finished);
            if let Some(exchange) = finished {
                exchange.deadline_ms = Some(deadline);
                if !close(token) {
                    self.end(token, Err((Reason::Refused, " (half-closing)")), now_ms);
                }
            }
        }
    }

    /// The node (or Envoy on its behalf) closed a stream with this gRPC status.
    pub fn closed(&mut self, token: u32, status: u32, now_ms: u64) {
        if status == GRPC_OK {
            return self.end(token, Ok(()), now_ms);
        }
        // Envoy ends a stream it could not connect UNAVAILABLE.
        let reason = match status {
            GRPC_UNAVAILABLE => Reason::Connection,
            GRPC_DEADLINE_EXCEEDED => Reason::Timeout,
            _ => Reason::Answer,
        };
        let detail = format!(" (gRPC status {status})");
        self.end(token, Err((reason, &detail)), now_ms);
    }

    /// A stream ended: completed, or failed for this reason.
    fn end(&mut self, token: u32, outcome: Result<(), (Reason, &str)>, now_ms: u64) {
        let Some(key) = self.tokens.remove(&token) else {
            return;
        };
        self.exchanges.remove(&key);
        if outcome.is_ok() {
            self.counters.extproc_streams_completed += 1;
            self.backoff.succeeded();
            self.log.succeeded();
        } else {
            if let Err((reason, detail)) = outcome {
                self.log.failed(reason, detail, 1, now_ms);
            }
            self.counters.extproc_streams_failed += 1;
            if self.backoff.failed(now_ms) {
                self.counters.backoffs += 1;
            }
        }
    }

    /// Cancels every half-closed stream the node has not closed within `node.timeout_ms`.
    pub fn expire(&mut self, now_ms: u64, mut cancel: impl FnMut(u32)) {
        let expired: Vec<(u64, u32)> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.deadline_ms.is_some_and(|d| d <= now_ms))
            .filter_map(|(key, e)| Some((*key, e.token?)))
            .collect();
        for (key, token) in expired {
            cancel(token);
            self.tokens.remove(&token);
            self.exchanges.remove(&key);
            self.counters.extproc_streams_cancelled += 1;
            let detail = format!(" (not closed {} ms after the exchange)", self.timeout_ms);
            self.log.failed(Reason::Timeout, &detail, 1, now_ms);
            if self.backoff.failed(now_ms) {
                self.counters.backoffs += 1;
            }
        }
    }

    /// A body was cut at its `capture.*_body_max`.
    pub fn body_truncated(&mut self) {
        self.counters.bodies_truncated += 1;
    }

    /// A body of a media type only counted (`capture.skip_body_content_types`).
    pub fn body_skipped(&mut self) {
        self.counters.bodies_skipped_content_type += 1;
    }

    /// Only the ext_proc counters and `backoffs`, `bodies_truncated` move in this mode.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Exchanges admitted and not yet ended.
    pub fn active(&self) -> u64 {
        self.exchanges.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn balanced(s: &Streams) {
        let c = s.counters();
        assert_eq!(
            c.extproc_exchanges,
            c.extproc_streams_completed
                + c.extproc_streams_failed
                + c.extproc_streams_cancelled
                + c.extproc_streams_refused
                + c.extproc_dropped_max_streams
                + c.extproc_dropped_backoff
                + s.active(),
            "{c:?}"
        );
    }

    /// A root that opens streams 100, 101, … and records what it sends and closes.
    #[derive(Default)]
    struct Host {
        next: u32,
        sent: Vec<(u32, Vec<u8>)>,
        closed: Vec<u32>,
    }

    fn flush(s: &mut Streams, host: &mut Host, now: u64) {
        let next = &mut host.next;
        let sent = &mut host.sent;
        let closed = &mut host.closed;
        s.flush(
            now,
            || {
                *next += 1;
                Ok(99 + *next)
            },
            |token, message| {
                sent.push((token, message.to_vec()));
                true
            },
            |token| {
                closed.push(token);
                true
            },
        );
    }

    #[test]
    fn held_messages_go_out_in_order_when_the_root_opens_the_stream() {
        let (mut s, mut host) = (Streams::new(8, 100, "n"), Host::default());
        let key = s.begin(0).unwrap();
        assert_eq!(s.deliver(key, b"a".to_vec()), Delivery::Held { wake: true });
        assert_eq!(
            s.deliver(key, b"b".to_vec()),
            Delivery::Held { wake: false }
        );
        flush(&mut s, &mut host, 1);
        assert_eq!(host.sent, [(100, b"a".to_vec()), (100, b"b".to_vec())]);
        assert_eq!(
            s.deliver(key, b"c".to_vec()),
            Delivery::Send(100, b"c".to_vec())
        );
        assert_eq!(s.sent(key, 1, true, 1), None);
        assert_eq!(s.finish(key, 5), Some(100));
        assert_eq!(s.finish(key, 5), None, "once");
        balanced(&s);
        s.closed(100, 0, 6);
        assert_eq!(s.counters().extproc_streams_completed, 1);
        assert_eq!(s.counters().extproc_messages_sent, 3);
        assert_eq!(s.counters().extproc_bytes_sent, 3);
        assert_eq!(s.active(), 0);
        balanced(&s);
    }

    #[test]
    fn an_exchange_that_ends_before_its_stream_opens_is_closed_at_open() {
        let (mut s, mut host) = (Streams::new(8, 100, "n"), Host::default());
        let key = s.begin(0).unwrap();
        s.deliver(key, b"a".to_vec());
        assert_eq!(s.finish(key, 0), None);
        flush(&mut s, &mut host, 1);
        assert_eq!(host.closed, [100]);
        // Not closed by the node within the timeout: cancelled.
        let mut cancelled = Vec::new();
        s.expire(100, |t| cancelled.push(t));
        assert!(cancelled.is_empty(), "deadline is 1 + 100");
        s.expire(101, |t| cancelled.push(t));
        assert_eq!(cancelled, [100]);
        assert_eq!(s.counters().extproc_streams_cancelled, 1);
        balanced(&s);
        // A late close from the host changes nothing.
        s.closed(100, 0, 200);
        assert_eq!(s.counters().extproc_streams_completed, 0);
        balanced(&s);
    }

    #[test]
    fn the_bound_on_streams_drops_and_counts() {
        let mut s = Streams::new(2, 100, "n");
        let a = s.begin(0).unwrap();
        s.begin(0).unwrap();
        assert_eq!(s.begin(0), None);
        assert_eq!(s.counters().extproc_dropped_max_streams, 1);
        assert_eq!(s.deliver(99, b"x".to_vec()), Delivery::Gone);
        balanced(&s);
        let mut host = Host::default();
        flush(&mut s, &mut host, 0);
        s.closed(100, 14, 1);
        assert_eq!(s.counters().extproc_streams_failed, 1);
        assert_eq!(s.deliver(a, b"x".to_vec()), Delivery::Gone);
        assert!(s.begin(1).is_some(), "a slot is free again");
        balanced(&s);
    }

    #[test]
    fn refused_opens_and_failures_back_off_then_probe() {
        let mut s = Streams::new(64, 100, "n");
        for _ in 0..3 {
            s.begin(0).unwrap();
        }
        let refused = || Err((Reason::UnknownCluster, String::new()));
        s.flush(0, refused, |_, _| true, |_| true);
        assert_eq!(s.counters().extproc_streams_refused, 3);
        // One warning for the three, naming the cluster and the reason.
        let lines = s.log.take();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .1
                .contains("to cluster 'n' fail: Envoy has no cluster by that name; 1 exchanges"),
            "{lines:?}"
        );
        assert_eq!(s.counters().backoffs, 1);
        assert_eq!(s.begin(10), None, "backing off");
        assert_eq!(s.counters().extproc_dropped_backoff, 1);
        let probe = s.begin(10_000);
        assert!(probe.is_some(), "one probe after the interval");
        assert_eq!(s.begin(10_000), None, "only one");
        let mut host = Host::default();
        flush(&mut s, &mut host, 10_000);
        s.closed(100, 0, 10_001);
        assert!(s.begin(10_002).is_some(), "the node is back");
        assert_eq!(
            s.log.take()[0].1,
            "oob-mirror: ext_proc streams to cluster 'n' delivered again"
        );
        balanced(&s);
    }

    #[test]
    fn a_refused_send_ends_the_stream() {
        let mut s = Streams::new(8, 100, "n");
        let key = s.begin(0).unwrap();
        s.deliver(key, b"a".to_vec());
        let mut closed = Vec::new();
        s.flush(
            0,
            || Ok(7),
            |_, _| false,
            |t| {
                closed.push(t);
                true
            },
        );
        assert_eq!(closed, [7]);
        assert_eq!(s.counters().extproc_streams_failed, 1);
        assert_eq!(s.counters().extproc_messages_sent, 0);
        assert_eq!(s.finish(key, 1), None);
        balanced(&s);
    }
}
