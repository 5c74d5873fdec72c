//! Load: 2,000 exchanges at concurrency 50; the node receives every record
//! exactly once and the filter's accounting is exact.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::client::{H1Conn, Req};
use support::records::{assert_no_decode_errors, id_census, wait_records};
use support::upstream::Echo;
use support::{stats, Rig};

const EXCHANGES: usize = 2000;
const CONCURRENCY: usize = 50;

#[test]
fn two_thousand_exchanges_at_concurrency_50_are_all_mirrored_once() {
    let rig = Rig::start();
    let addr = rig.envoy.addr();
    let started = Instant::now();
    let per_task = EXCHANGES / CONCURRENCY;
    let results: Vec<Result<Vec<String>, String>> = rig.client.runtime().block_on(async {
        let mut tasks = Vec::new();
        for t in 0..CONCURRENCY {
            tasks.push(tokio::spawn(async move {
                let mut conn = H1Conn::connect(addr).await?;
                let mut ids = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let req = if i % 4 == 0 {
                        Req::post(&format!("/load?t={t}&i={i}"), format!("payload {t} {i}"))
                    } else {
                        Req::get(&format!("/load?t={t}&i={i}"))
                    };
                    let resp = tokio::time::timeout(Duration::from_secs(20), conn.send(&req))
                        .await
                        .map_err(|_| format!("task {t} request {i}: timeout"))??;
                    if resp.status != 200 {
                        return Err(format!("task {t} request {i}: status {}", resp.status));
                    }
                    ids.push(Echo::parse(&resp.body).request_id());
                }
                Ok(ids)
            }));
        }
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
        }
        out
    });
    let client_time = started.elapsed();
    let mut ids = HashSet::new();
    for r in results {
        for id in r.unwrap_or_else(|e| panic!("{e}")) {
            assert!(ids.insert(id.clone()), "the upstream saw id {id} twice");
        }
    }
    assert_eq!(ids.len(), EXCHANGES);

    let records = wait_records(&rig.node, 2 * EXCHANGES, Duration::from_secs(30));
    let st = stats::wait_drained(&rig.envoy, Duration::from_secs(30));
    // Nothing more arrives after the filter is drained.
    assert!(records.len() >= 2 * EXCHANGES);
    let records_after = rig.node.records();
    assert_no_decode_errors(&rig.node);
    assert_eq!(
        records_after.len(),
        2 * EXCHANGES,
        "records at the node (client took {client_time:?})"
    );
    let census = id_census(&records_after);
    assert_eq!(census.len(), EXCHANGES, "distinct ids at the node");
    for (id, (reqs, resps)) in &census {
        assert_eq!((*reqs, *resps), (1, 1), "records for id {id}");
    }
    // Each client exchange (named by the x-request-id the upstream saw) is one request record.
    let mut seen = HashSet::new();
    for r in records_after.iter().filter(|r| r.is_request()) {
        let request_id = r
            .header("x-request-id")
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| panic!("request {} without x-request-id", r.id));
        assert!(
            ids.contains(request_id),
            "the node got exchange {request_id} that no client had"
        );
        assert!(seen.insert(request_id), "exchange {request_id} twice");
    }
    assert!(records_after.iter().all(|r| r.complete));

    assert_eq!(st.get("records_captured"), 2 * EXCHANGES as i128, "{st:?}");
    assert_eq!(st.get("records_sent"), 2 * EXCHANGES as i128, "{st:?}");
    assert_eq!(st.dropped(), 0, "{st:?}");
    assert_eq!(st.get("queued_records"), 0, "{st:?}");
    assert_eq!(st.get("inflight_records"), 0, "{st:?}");
    assert_eq!(st.get("queued_bytes"), 0, "{st:?}");
    assert_eq!(st.batches_failed(), 0, "{st:?}");
    assert_eq!(
        st.get("batches_sent"),
        rig.node.batch_count() as i128,
        "{st:?}"
    );
    rig.envoy.assert_no_critical_wasm();
}
