//! Exchange ids: a random per-VM prefix and a counter, so ids are unique across the workers of
//! one Envoy process. Never taken from the client (`x-request-id` can be forged or reused).

#[derive(Debug, Clone)]
pub struct IdGenerator {
    prefix: String,
    next: u64,
}

impl IdGenerator {
    /// `seed` should differ per VM (random bits mixed with the start time).
    pub fn new(seed: u64) -> Self {
        IdGenerator {
            prefix: format!("oob-{seed:016x}"),
            next: 0,
        }
    }

    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}-{}", self.prefix, self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn ids_are_distinct_within_and_across_generators() {
        let mut a = IdGenerator::new(1);
        let mut b = IdGenerator::new(2);
        let ids = [a.next_id(), a.next_id(), b.next_id()];
        assert_eq!(ids[0], "oob-0000000000000001-1");
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
    }
}
