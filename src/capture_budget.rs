//! A worker-wide budget for body bytes held by streams still in progress. The per-stream caps
//! bound one exchange; this bounds them all together, so many concurrent large uploads cannot
//! make a worker hold `streams × caps` in memory. Past it, body bytes are counted, not copied.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureBudget {
    limit: u64,
    used: u64,
}

impl CaptureBudget {
    pub fn new(limit: u64) -> Self {
        CaptureBudget { limit, used: 0 }
    }

    /// Reserves up to `wanted` bytes; returns how many were granted.
    pub fn grant(&mut self, wanted: usize) -> usize {
        let room = self.limit.saturating_sub(self.used);
        let granted = usize::try_from(room).map_or(wanted, |room| wanted.min(room));
        self.used += granted as u64;
        granted
    }

    /// Returns bytes granted earlier, once the record holding them is queued or dropped.
    pub fn release(&mut self, bytes: usize) {
        self.used = self.used.saturating_sub(bytes as u64);
    }

    pub fn used(&self) -> u64 {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn grants_up_to_the_limit_and_frees_on_release() {
        let mut budget = CaptureBudget::new(10);
        assert_eq!(budget.grant(4), 4);
        assert_eq!(budget.grant(8), 6);
        assert_eq!(budget.grant(1), 0);
        assert_eq!(budget.used(), 10);
        budget.release(6);
        assert_eq!(budget.grant(7), 6);
        budget.release(100);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn zero_budget_grants_nothing() {
        assert_eq!(CaptureBudget::new(0).grant(5), 0);
    }
}
