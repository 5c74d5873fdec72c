//! Node health: after repeated failures the worker stops sending for a growing interval and
//! then probes with a single batch, so a dead node costs no connection attempt per exchange.

/// Consecutive failed batches that make the worker back off.
pub const FAILURES_BEFORE_BACKOFF: u32 = 3;
pub const FIRST_BACKOFF_MS: u64 = 250;
pub const MAX_BACKOFF_MS: u64 = 8_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    consecutive_failures: u32,
    interval_ms: u64,
    /// Sending resumes (with one probe batch) at this time.
    until_ms: Option<u64>,
    probing: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            consecutive_failures: 0,
            interval_ms: FIRST_BACKOFF_MS,
            until_ms: None,
            probing: false,
        }
    }
}

/// What the transport may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Send as many batches as the in-flight bound allows.
    Send,
    /// Send one batch to find out whether the node is back.
    Probe,
    /// Send nothing yet.
    Wait,
}

impl Backoff {
    pub fn permit(&self, now_ms: u64, inflight: u64) -> Permit {
        match self.until_ms {
            None => Permit::Send,
            Some(until) if now_ms >= until && inflight == 0 && !self.probing => Permit::Probe,
            Some(_) => Permit::Wait,
        }
    }

    /// A probe batch went out: no more until it comes back.
    pub fn probe_sent(&mut self) {
        self.probing = true;
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::default();
    }

    /// Returns true when this failure starts (or extends) a backoff interval.
    pub fn failed(&mut self, now_ms: u64) -> bool {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.probing {
            // The probe failed: wait twice as long before the next one.
            self.probing = false;
            self.interval_ms = (self.interval_ms * 2).min(MAX_BACKOFF_MS);
            self.until_ms = Some(now_ms + self.interval_ms);
            return true;
        }
        if self.until_ms.is_none() && self.consecutive_failures >= FAILURES_BEFORE_BACKOFF {
            self.until_ms = Some(now_ms + self.interval_ms);
            return true;
        }
        false
    }

    #[cfg(test)]
    fn backing_off(&self) -> bool {
        self.until_ms.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn backs_off_after_repeated_failures_and_grows() {
        let mut b = Backoff::default();
        assert!(!b.failed(0));
        assert!(!b.failed(0));
        assert_eq!(b.permit(0, 0), Permit::Send);
        assert!(b.failed(1000));
        assert_eq!(b.permit(1000, 0), Permit::Wait);
        assert_eq!(
            b.permit(1000 + FIRST_BACKOFF_MS, 1),
            Permit::Wait,
            "others in flight"
        );
        assert_eq!(b.permit(1000 + FIRST_BACKOFF_MS, 0), Permit::Probe);
        b.probe_sent();
        assert_eq!(b.permit(1000 + FIRST_BACKOFF_MS, 0), Permit::Wait);
        assert!(b.failed(2000));
        assert_eq!(b.permit(2000 + FIRST_BACKOFF_MS, 0), Permit::Wait);
        assert_eq!(b.permit(2000 + 2 * FIRST_BACKOFF_MS, 0), Permit::Probe);
    }

    #[test]
    fn interval_is_capped_and_success_resets() {
        let mut b = Backoff::default();
        let mut now = 0;
        for _ in 0..3 {
            b.failed(now);
        }
        for _ in 0..20 {
            now += MAX_BACKOFF_MS;
            assert_eq!(b.permit(now, 0), Permit::Probe);
            b.probe_sent();
            b.failed(now);
        }
        assert_eq!(b.permit(now + MAX_BACKOFF_MS - 1, 0), Permit::Wait);
        assert_eq!(b.permit(now + MAX_BACKOFF_MS, 0), Permit::Probe);
        b.probe_sent();
        b.succeeded();
        assert_eq!(b.permit(now, 5), Permit::Send);
        assert!(!b.backing_off());
    }

    #[test]
    fn a_success_between_failures_restarts_the_count() {
        let mut b = Backoff::default();
        b.failed(0);
        b.failed(0);
        b.succeeded();
        assert!(!b.failed(0));
        assert!(!b.backing_off());
    }
}
