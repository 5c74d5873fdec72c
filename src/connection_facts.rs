//! What a request record says about its downstream connection, remembered per connection.
//!
//! Each attribute read from the host costs a round trip through the Wasm runtime (about as much
//! as the filter's own encoding of a record). Protocol, addresses and TLS do not change during a
//! connection, so a worker reads them once per connection id and every later stream on that
//! connection (keep-alive, HTTP/2 multiplexing) reads only the id.

/// Connection facts of a request record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionFacts {
    pub protocol: String,
    pub source: String,
    pub destination: String,
    pub tls: bool,
}

/// Facts of recently seen connections in a fixed number of slots, chosen by connection id (a
/// hash map would cost the module 4 KB). Two live connections that share a slot only cost
/// re-reads, never a wrong answer: an entry is used only when its id matches, and Envoy never
/// reuses an id.
#[derive(Debug)]
pub struct ConnectionFactsCache {
    slots: Vec<Option<(u64, ConnectionFacts)>>,
}

impl ConnectionFactsCache {
    pub fn new(slots: usize) -> Self {
        let mut cache = ConnectionFactsCache { slots: Vec::new() };
        cache.slots.resize_with(slots.max(1), || None);
        cache
    }

    /// The facts of connection `id`, reading them with `read` only if not known yet.
    pub fn get_or_read(
        &mut self,
        id: u64,
        read: impl FnOnce() -> ConnectionFacts,
    ) -> Option<&ConnectionFacts> {
        let index = usize::try_from(id % self.slots.len() as u64).ok()?;
        let slot = self.slots.get_mut(index)?;
        if !matches!(slot, Some((known, _)) if *known == id) {
            *slot = Some((id, read()));
        }
        slot.as_ref().map(|(_, facts)| facts)
    }

    /// Connections currently remembered.
    pub fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn facts(source: &str) -> ConnectionFacts {
        ConnectionFacts {
            protocol: "HTTP/1.1".into(),
            source: source.into(),
            destination: "10.0.0.1:443".into(),
            tls: true,
        }
    }

    #[test]
    fn reads_once_per_connection() {
        let mut cache = ConnectionFactsCache::new(8);
        let mut reads = 0;
        for _ in 0..3 {
            let got = cache.get_or_read(7, || {
                reads += 1;
                facts("192.0.2.1:5000")
            });
            assert_eq!(got, Some(&facts("192.0.2.1:5000")));
        }
        assert_eq!(reads, 1);
        let other = cache.get_or_read(8, || facts("192.0.2.2:6000")).cloned();
        assert_eq!(other.map(|f| f.source).as_deref(), Some("192.0.2.2:6000"));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_shared_slot_costs_a_read_never_a_wrong_answer() {
        let mut cache = ConnectionFactsCache::new(3);
        for id in 0..10 {
            cache.get_or_read(id, || facts(&format!("192.0.2.1:{id}")));
            assert!(cache.len() <= 3, "{} entries", cache.len());
        }
        // 0 shared its slot with 3, 6 and 9: it is read again, and answers with its own facts.
        let mut read_again = false;
        let got = cache.get_or_read(0, || {
            read_again = true;
            facts("192.0.2.1:0")
        });
        assert_eq!(got.map(|f| f.source.as_str()), Some("192.0.2.1:0"));
        assert!(read_again);
        // 9's facts were displaced by 0's, 8's were not.
        let kept = cache.get_or_read(8, || facts("wrong"));
        assert_eq!(kept.map(|f| f.source.as_str()), Some("192.0.2.1:8"));
    }
}
