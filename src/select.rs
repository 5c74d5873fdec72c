//! Which exchanges are mirrored: scope (paths, hosts, methods), sampling (a rate and a
//! per-worker ceiling per second), and shedding as the batch queue fills. Decided once per
//! exchange at its request headers, so both records of an exchange go or neither does; every
//! exchange not mirrored is counted by reason. Host-free.

use crate::accounting::Counters;
use crate::config::{Config, SamplingConfig, ScopeConfig, RATE_ALL};
use crate::record::HeaderList;

/// The request pseudo-headers the choice reads, as Envoy passed them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    pub method: &'a [u8],
    pub authority: &'a [u8],
    pub path: &'a [u8],
}

impl<'a> Request<'a> {
    /// From a header list that holds the pseudo-headers (missing ones are empty).
    pub fn from_headers(headers: &'a HeaderList) -> Self {
        let value = |name: &str| headers.get(name).unwrap_or_default();
        Request {
            method: value(":method"),
            authority: value(":authority"),
            path: value(":path"),
        }
    }
}

/// Why an exchange is not mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    Scope,
    Sampling,
    RateLimit,
    /// The batch queue is filling: whole exchanges go before single records would.
    Shed,
}

/// How strongly the sampler pulls its count back to `rate × exchanges`: a sixty-fourth of the
/// deficit per exchange keeps each decision close to an independent draw (the probability moves
/// by a few points at most) while the count stays within a few exchanges of the rate.
const PULL_SHIFT: u32 = 6;

#[derive(Debug)]
pub struct Selector {
    scope: ScopeConfig,
    sampling: SamplingConfig,
    /// Expected minus taken, in millionths of an exchange.
    deficit: i64,
    rng: u64,
    /// The current second (ms / 1000) and how many exchanges it has mirrored.
    second: u64,
    in_second: u64,
    skipped: [u64; 4],
}

impl Selector {
    /// `seed` should differ per VM.
    pub fn new(config: &Config, seed: u64) -> Self {
        Selector {
            scope: config.scope.clone(),
            sampling: config.sampling.clone(),
            deficit: 0,
            rng: seed ^ 0x6a09_e667_f3bc_c908,
            second: 0,
            in_second: 0,
            skipped: [0; 4],
        }
    }

    /// Whether the exchange with these request pseudo-headers is mirrored; `queue` is the batch
    /// queue's (queued bytes, bound), `None` where there is no queue to shed for.
    pub fn admit(&mut self, request: Request, now_ms: u64, queue: Option<(u64, u64)>) -> bool {
        match self.decide(request, now_ms, queue) {
            Ok(()) => true,
            Err(skip) => {
                if let Some(count) = self.skipped.get_mut(skip as usize) {
                    *count += 1;
                }
                false
            }
        }
    }

    fn decide(
        &mut self,
        request: Request,
        now_ms: u64,
        queue: Option<(u64, u64)>,
    ) -> Result<(), Skip> {
        if !self.in_scope(request) {
            return Err(Skip::Scope);
        }
        if !self.sample() {
            return Err(Skip::Sampling);
        }
        if let Some((used, bound)) = queue.filter(|_| self.sampling.shed) {
            if !self.keep_while_filling(used, bound) {
                return Err(Skip::Shed);
            }
        }
        if let Some(max) = self.sampling.max_per_second {
            let second = now_ms / 1000;
            if second != self.second {
                self.second = second;
                self.in_second = 0;
            }
            if self.in_second >= max {
                return Err(Skip::RateLimit);
            }
            self.in_second += 1;
        }
        Ok(())
    }

    fn in_scope(&self, request: Request) -> bool {
        let Request {
            method,
            authority,
            path,
        } = request;
        let scope = &self.scope;
        if !scope.methods.is_empty() && !scope.methods.iter().any(|m| m.as_bytes() == method) {
            return false;
        }
        if !scope.include_hosts.is_empty() {
            let host = host_of(authority);
            if !scope.include_hosts.iter().any(|h| host_matches(h, host)) {
                return false;
            }
        }
        if !scope.exclude_paths.is_empty() {
            let path = path.split(|b| *b == b'?').next().unwrap_or_default();
            let excluded = scope.exclude_paths.iter().any(|entry| {
                let entry = entry.as_bytes();
                if entry.ends_with(b"/") {
                    path.starts_with(entry)
                } else {
                    path == entry
                }
            });
            if excluded {
                return false;
            }
        }
        true
    }

    /// One draw at `sampling.rate`, nudged towards the rate by the running deficit.
    fn sample(&mut self) -> bool {
        let rate = i64::from(self.sampling.rate_ppm);
        if rate >= i64::from(RATE_ALL) {
            return true;
        }
        if rate == 0 {
            return false;
        }
        let all = i64::from(RATE_ALL);
        let chance = (rate + (self.deficit >> PULL_SHIFT)).clamp(0, all);
        let take = self.draw() < chance;
        self.deficit += rate - if take { all } else { 0 };
        take
    }

    /// Kept for sure below half the bound, never at seven eighths, and with a chance falling
    /// linearly between: the last eighth is room for the responses of exchanges already taken.
    fn keep_while_filling(&mut self, used: u64, bound: u64) -> bool {
        let start = bound / 2;
        let end = bound - bound / 8;
        if used < start {
            return true;
        }
        if used >= end {
            return false;
        }
        let span = i64::try_from(end - start).unwrap_or(i64::MAX).max(1);
        let left = i64::try_from(end - used).unwrap_or(0);
        let chance = left.saturating_mul(i64::from(RATE_ALL)) / span;
        self.draw() < chance
    }

    /// A uniform draw in [0, 1000000) (splitmix64).
    fn draw(&mut self) -> i64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let scaled = ((z >> 32) * u64::from(RATE_ALL)) >> 32;
        i64::try_from(scaled).unwrap_or(0)
    }

    /// Adds the skipped exchanges to the published counters.
    pub fn add_to(&self, counters: &mut Counters) {
        let [scope, sampling, rate_limit, shed] = self.skipped;
        counters.exchanges_skipped_scope += scope;
        counters.exchanges_skipped_sampling += sampling;
        counters.exchanges_skipped_rate_limit += rate_limit;
        counters.exchanges_shed += shed;
    }
}

/// The host of an `:authority`: without its port, IPv6 brackets kept.
fn host_of(authority: &[u8]) -> &[u8] {
    if authority.starts_with(b"[") {
        let end = authority
            .iter()
            .position(|b| *b == b']')
            .map_or(authority.len(), |i| i + 1);
        return authority.get(..end).unwrap_or(authority);
    }
    match authority.iter().rposition(|b| *b == b':') {
        Some(colon) => authority.get(..colon).unwrap_or(authority),
        None => authority,
    }
}

/// `example.com` matches itself; `*.example.com` matches any name ending in `.example.com`.
fn host_matches(pattern: &str, host: &[u8]) -> bool {
    let host = host.strip_suffix(b".").unwrap_or(host);
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            host.len() > suffix.len()
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix.as_bytes()))
        }
        None => host.eq_ignore_ascii_case(pattern.as_bytes()),
    }
}

/// Whether a body with this `content-type` is only counted (`capture.skip_body_content_types`).
pub fn skip_body(skip: &[String], content_type: Option<&[u8]>) -> bool {
    let Some(content_type) = content_type else {
        return false;
    };
    let essence = content_type
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    skip.iter().any(|entry| {
        let entry = entry.as_bytes();
        if entry.ends_with(b"/") {
            essence.len() > entry.len()
                && essence
                    .get(..entry.len())
                    .is_some_and(|top| top.eq_ignore_ascii_case(entry))
        } else {
            essence.eq_ignore_ascii_case(entry)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn selector(json: &str, seed: u64) -> Selector {
        let text = format!(r#"{{"node":{{"cluster":"n"}}{json}}}"#);
        Selector::new(&Config::parse(text.as_bytes()).unwrap(), seed)
    }

    fn get() -> Request<'static> {
        Request {
            method: b"GET",
            authority: b"a",
            path: b"/",
        }
    }

    fn counters(s: &Selector) -> Counters {
        let mut c = Counters::default();
        s.add_to(&mut c);
        c
    }

    #[test]
    fn by_default_everything_is_mirrored() {
        let mut s = selector("", 1);
        for i in 0..1000 {
            assert!(s.admit(get(), i, Some((0, 100))));
        }
        assert_eq!(counters(&s), Counters::default());
    }

    #[test]
    fn scope_excludes_exactly_what_it_says() {
        let mut s = selector(
            r#","scope":{"exclude_paths":["/health","/static/"],
                          "include_hosts":["api.example.com","*.shop.test"],
                          "methods":["GET","POST"]}"#,
            1,
        );
        let mut admit = |m: &str, a: &str, p: &str| {
            let request = Request {
                method: m.as_bytes(),
                authority: a.as_bytes(),
                path: p.as_bytes(),
            };
            s.admit(request, 0, None)
        };
        assert!(admit("GET", "api.example.com", "/api/users"));
        assert!(admit("POST", "API.Example.com:8443", "/healthz"));
        assert!(admit("GET", "api.example.com", "/health/deep"));
        assert!(admit("GET", "api.example.com", "/static"));
        assert!(admit("GET", "eu.shop.test", "/"));
        assert!(admit("GET", "a.b.shop.test.", "/"));
        assert!(!admit("GET", "api.example.com", "/health"));
        assert!(!admit("GET", "api.example.com", "/health?probe=1"));
        assert!(!admit("GET", "api.example.com", "/static/app.js"));
        assert!(!admit("GET", "api.example.com", "/static/"));
        assert!(!admit("GET", "shop.test", "/"));
        assert!(!admit("GET", "evil-shop.test", "/"));
        assert!(!admit("GET", "example.com", "/"));
        assert!(!admit("GET", "", "/"));
        assert!(!admit("PUT", "api.example.com", "/api/users"));
        assert!(!admit("get", "api.example.com", "/api/users"));
        assert_eq!(counters(&s).exchanges_skipped_scope, 10);
    }

    #[test]
    fn hosts_lose_their_port_only() {
        assert_eq!(host_of(b"a.test:80"), b"a.test");
        assert_eq!(host_of(b"a.test"), b"a.test");
        assert_eq!(host_of(b"[::1]:8080"), b"[::1]");
        assert_eq!(host_of(b"[::1]"), b"[::1]");
        assert!(host_matches("[::1]", b"[::1]"));
    }

    #[test]
    fn sampling_keeps_the_rate_closely_and_still_draws() {
        for seed in 0..200 {
            let mut s = selector(r#","sampling":{"rate":0.2}"#, seed);
            let taken: Vec<bool> = (0..5000).map(|i| s.admit(get(), i, None)).collect();
            let count = taken.iter().filter(|t| **t).count();
            assert!((990..=1010).contains(&count), "seed {seed}: {count}");
            assert_eq!(counters(&s).exchanges_skipped_sampling, 5000 - count as u64);
            // Not a fixed pattern: the gaps between taken exchanges vary.
            let mut gaps = std::collections::BTreeSet::new();
            let mut last = 0;
            for (i, _) in taken.iter().enumerate().filter(|(_, t)| **t) {
                gaps.insert(i - last);
                last = i;
            }
            assert!(gaps.len() > 10, "seed {seed}: gaps {gaps:?}");
        }
        let mut none = selector(r#","sampling":{"rate":0}"#, 3);
        assert!((0..100).all(|i| !none.admit(get(), i, None)));
        let mut tiny = selector(r#","sampling":{"rate":0.000001}"#, 3);
        let taken = (0..3_000_000)
            .filter(|i| tiny.admit(get(), *i, None))
            .count();
        assert!((1..=5).contains(&taken), "{taken}");
    }

    #[test]
    fn the_ceiling_is_per_second() {
        let mut s = selector(r#","sampling":{"max_per_second":3}"#, 1);
        let in_first: usize = (0..10).filter(|_| s.admit(get(), 1500, None)).count();
        let in_next: usize = (0..10).filter(|_| s.admit(get(), 2000, None)).count();
        assert_eq!((in_first, in_next), (3, 3));
        assert_eq!(counters(&s).exchanges_skipped_rate_limit, 14);
    }

    #[test]
    fn exchanges_are_shed_as_the_queue_fills() {
        let mut s = selector("", 7);
        let kept = |s: &mut Selector, used| {
            (0..1000)
                .filter(|i| s.admit(get(), *i, Some((used, 8000))))
                .count()
        };
        assert_eq!(kept(&mut s, 3999), 1000);
        assert_eq!(kept(&mut s, 7000), 0);
        assert_eq!(kept(&mut s, 9000), 0);
        let half_way = kept(&mut s, 5500);
        assert!((400..600).contains(&half_way), "{half_way}");
        assert_eq!(counters(&s).exchanges_shed, 2000 + 1000 - half_way as u64);
        let mut off = selector(r#","sampling":{"shed":false}"#, 7);
        assert_eq!(kept(&mut off, 7000), 1000);
    }

    #[test]
    fn skipped_content_types() {
        let skip = crate::config::CaptureConfig::default().skip_body_content_types;
        for ct in [
            "image/png",
            "IMAGE/JPEG; q=1",
            "video/mp4",
            "font/woff2",
            "application/zip",
            "application/gzip",
        ] {
            assert!(skip_body(&skip, Some(ct.as_bytes())), "{ct}");
        }
        for ct in [
            "application/json",
            "text/html",
            "image",
            "image/",
            "application/zipper",
            "multipart/form-data; boundary=x",
        ] {
            assert!(!skip_body(&skip, Some(ct.as_bytes())), "{ct}");
        }
        assert!(!skip_body(&skip, None));
    }
}
