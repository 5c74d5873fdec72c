//! The test analysis node (`oob-mirror-node`) and helpers over its records.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub use oob_mirror_node::{HeaderValue, Kind, Record};
pub use recording_node::{Behavior, Node};

use super::envoy::Envoy;
use super::stats::{self, Stats};
use super::wait::poll_until;

/// Starts a node on a free port, acknowledging every batch.
pub fn start_node() -> Node {
    Node::start().expect("start the test node")
}

/// A str header value.
pub fn s(v: &str) -> HeaderValue {
    HeaderValue::Str(v.to_string())
}

/// `[(name, Str(value))]` from string pairs.
pub fn str_headers(pairs: &[(&str, &str)]) -> Vec<(String, HeaderValue)> {
    pairs
        .iter()
        .map(|(n, v)| ((*n).to_string(), s(v)))
        .collect()
}

/// Fails the test if a batch did not decode.
pub fn assert_no_decode_errors(node: &Node) {
    let errors = node.errors();
    assert!(errors.is_empty(), "batches failed to decode: {errors:?}");
}

/// Records of the exchange `id`, in arrival order: the record id, or the `x-request-id` the
/// request carried (tests name exchanges by it; the filter's own id is never the client's).
pub fn with_id(records: &[Record], id: &str) -> Vec<Record> {
    let ids: HashSet<&str> = records
        .iter()
        .filter(|r| {
            r.id == id
                || (r.is_request()
                    && r.header("x-request-id").and_then(HeaderValue::as_str) == Some(id))
        })
        .map(|r| r.id.as_str())
        .collect();
    records
        .iter()
        .filter(|r| ids.contains(r.id.as_str()))
        .cloned()
        .collect()
}

/// Waits until the node holds a request and a response record for `id`, and
/// returns them; fails if either kind appears more than once.
///
/// Uniqueness is checked only once nothing more can arrive: the filter's
/// accounting is settled (every captured record sent or dropped, none queued
/// or in flight) in a metrics snapshot that already counts every distinct
/// record the node holds, and the node holds at least every record the
/// filter counts as sent (the node stores a batch before acknowledging it).
pub fn wait_exchange(envoy: &Envoy, node: &Node, id: &str, timeout: Duration) -> (Record, Record) {
    let found = poll_until(timeout, || {
        let recs = with_id(&node.records(), id);
        let has_req = recs.iter().any(Record::is_request);
        let has_resp = recs.iter().any(Record::is_response);
        (has_req && has_resp).then_some(recs)
    });
    assert_no_decode_errors(node);
    if found.is_none() {
        panic!(
            "the node did not get both records of exchange {id:?} within {timeout:?}; \
             records with that id: {:#?}\nall ids: {:?}",
            with_id(&node.records(), id),
            node.records()
                .iter()
                .map(|r| format!("{} {}", r.kind, r.id))
                .collect::<Vec<_>>()
        );
    }
    let mut last = (Stats::default(), 0, 0);
    let settled = poll_until(timeout, || {
        let st = stats::read(envoy);
        let records = node.records();
        let distinct = distinct_records(&records);
        let ok = st.is_drained()
            && st.get("records_captured") >= distinct as i128
            && records.len() as i128 >= st.get("records_sent");
        last = (st, records.len(), distinct);
        ok.then_some(())
    });
    if settled.is_none() {
        let (st, at_node, distinct) = &last;
        panic!(
            "after exchange {id:?} reached the node, the filter and the node did not settle \
             within {timeout:?} (node holds {at_node} records, {distinct} distinct); \
             last metrics:\n{st:?}\n{}",
            st.check_invariant().err().unwrap_or_default()
        );
    }
    assert_no_decode_errors(node);
    let recs = with_id(&node.records(), id);
    let reqs: Vec<&Record> = recs.iter().filter(|r| r.is_request()).collect();
    let resps: Vec<&Record> = recs.iter().filter(|r| r.is_response()).collect();
    assert_eq!(reqs.len(), 1, "request records for {id:?}: {reqs:#?}");
    assert_eq!(resps.len(), 1, "response records for {id:?}: {resps:#?}");
    (reqs[0].clone(), resps[0].clone())
}

/// How many distinct records (by id and kind) are in `records`.
pub fn distinct_records(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| (r.id.as_str(), r.kind.to_string()))
        .collect::<HashSet<_>>()
        .len()
}

/// Waits until the node holds a request record for `id`.
pub fn wait_request(node: &Node, id: &str, timeout: Duration) -> Option<Record> {
    poll_until(timeout, || {
        node.records()
            .into_iter()
            .find(|r| r.id == id && r.is_request())
    })
}

/// Waits until exactly... at least `n` records arrived; fails with details.
pub fn wait_records(node: &Node, n: usize, timeout: Duration) -> Vec<Record> {
    match node.wait_for_records(n, timeout) {
        Ok(r) => r,
        Err(e) => panic!(
            "waiting for {n} records: {e}; batches so far: {}",
            node.batch_count()
        ),
    }
}

/// How many records of each kind carry each id.
pub fn id_census(records: &[Record]) -> HashMap<String, (usize, usize)> {
    let mut map: HashMap<String, (usize, usize)> = HashMap::new();
    for r in records {
        let e = map.entry(r.id.clone()).or_default();
        if r.is_request() {
            e.0 += 1;
        } else if r.is_response() {
            e.1 += 1;
        }
    }
    map
}

/// Header list as printable pairs (for failure messages).
pub fn show_headers(list: &[(String, HeaderValue)]) -> Vec<String> {
    list.iter()
        .map(|(n, v)| match v {
            HeaderValue::Str(s) => format!("{n}: {s}"),
            HeaderValue::Bin(b) => format!("{n}: <bin {b:02x?}>"),
        })
        .collect()
}
