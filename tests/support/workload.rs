//! Requests whose answers do not depend on anything Envoy generates (no request ids in the
//! bodies), so runs with and without a filter, or with a node up and down, compare.

use super::client::{Client, Proto, Req};
use super::upstream::pattern;
use super::Envoy;
use std::time::{Duration, Instant};

pub fn workload() -> Vec<Req> {
    let mut reqs = Vec::new();
    for round in 0..3 {
        reqs.push(Req::get(&format!("/download/{}", 1000 + round)));
        reqs.push(Req::get("/status/404"));
        reqs.push(Req::post("/upload-sha", pattern(200_000 + round)));
        reqs.push(Req::get("/download/100000").proto(Proto::H2));
        reqs.push(Req::get("/status/201").proto(Proto::H2));
        reqs.push(Req::new(Proto::H2, "PUT", "/upload-sha").body(pattern(70_000)));
        reqs.push(Req::get("/trailers").proto(Proto::H2));
    }
    reqs
}

/// What the clients saw of each request: status, body, trailers.
pub type Outcome = Vec<(u16, Vec<u8>, Vec<(String, String)>)>;

/// Sends the workload through `envoy`, in order; what the clients saw and how long it took.
pub fn run(client: &Client, envoy: &Envoy) -> (Outcome, Duration) {
    let started = Instant::now();
    let out = workload()
        .iter()
        .map(|r| {
            let resp = client.send(envoy.addr(), r);
            (resp.status, resp.body, resp.trailers)
        })
        .collect();
    (out, started.elapsed())
}

/// Asserts that the clients saw through `what` (e.g. "the filter") exactly what they saw
/// without it.
pub fn assert_same_answers(got: &Outcome, expected: &Outcome, what: &str) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            g == e,
            "response {i} differs with {what}: status {} vs {}, body {} vs {} bytes, \
             trailers {:?} vs {:?}",
            g.0,
            e.0,
            g.1.len(),
            e.1.len(),
            g.2,
            e.2
        );
    }
}
