//! Body capture for one direction: copies bytes up to a cap and keeps counting past it, so a
//! record carries the true size and whether its body was truncated.

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BodyCapture {
    data: Vec<u8>,
    cap: usize,
    size: u64,
    /// Set when the bytes were replaced (redaction): `(truncated, cut_by_budget)` of the
    /// bytes as captured, which the replacement's length no longer tells.
    replaced: Option<(bool, bool)>,
    /// Its media type is only counted (`capture.skip_body_content_types`).
    skipped: bool,
}

impl BodyCapture {
    pub fn new(cap: u64) -> Self {
        BodyCapture {
            data: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            size: 0,
            replaced: None,
            skipped: false,
        }
    }

    /// A body whose bytes are not copied, only counted: it arrives empty, with its true size
    /// and `truncated` set.
    pub fn skipped() -> Self {
        BodyCapture {
            skipped: true,
            ..BodyCapture::new(0)
        }
    }

    /// Not copied because of its media type (and not empty).
    pub fn skipped_by_type(&self) -> bool {
        self.skipped && self.size > 0
    }

    /// How many bytes of the next chunk are still worth reading from the host; reading only
    /// these keeps a large body from being copied into the VM at all.
    pub fn wanted(&self, chunk_len: usize) -> usize {
        chunk_len.min(self.cap.saturating_sub(self.data.len()))
    }

    /// Records a chunk of `chunk_len` bytes of which `prefix` (at most `wanted`) was read.
    pub fn add(&mut self, chunk_len: usize, prefix: &[u8]) {
        let room = self.cap.saturating_sub(self.data.len());
        let keep = prefix.get(..prefix.len().min(room)).unwrap_or_default();
        self.data.extend_from_slice(keep);
        self.size = self.size.saturating_add(chunk_len as u64);
    }

    /// Fewer bytes were kept than the cap allowed: only the worker's capture budget (which
    /// grants less than `wanted`) makes that happen.
    pub fn cut_by_budget(&self) -> bool {
        match self.replaced {
            Some((_, cut)) => cut,
            None => (self.data.len() as u64) < self.size.min(self.cap as u64),
        }
    }

    /// Replaces the captured bytes (redacted, or withheld with `truncated`), keeping the true
    /// size and what was true of the capture.
    pub fn replace(&mut self, data: Vec<u8>, truncated: bool) {
        self.replaced = Some((self.truncated() || truncated, self.cut_by_budget()));
        self.data = data;
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn truncated(&self) -> bool {
        match self.replaced {
            Some((truncated, _)) => truncated,
            None => self.size > self.data.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keeps_up_to_the_cap_and_counts_everything() {
        let mut body = BodyCapture::new(5);
        assert_eq!(body.wanted(3), 3);
        body.add(3, b"abc");
        assert_eq!(body.wanted(3), 2);
        body.add(3, b"de");
        assert_eq!(body.wanted(100), 0);
        body.add(100, b"");
        assert_eq!(body.bytes(), b"abcde");
        assert_eq!(body.size(), 106);
        assert!(body.truncated());
    }

    #[test]
    fn a_body_that_fits_is_not_truncated() {
        let mut body = BodyCapture::new(5);
        body.add(5, b"hello");
        assert!(!body.truncated());
        assert_eq!(body.size(), 5);
    }

    #[test]
    fn more_than_wanted_is_still_capped() {
        let mut body = BodyCapture::new(2);
        body.add(4, b"abcd");
        assert_eq!(body.bytes(), b"ab");
        assert_eq!(body.size(), 4);
    }

    #[test]
    fn keeping_less_than_wanted_is_a_budget_cut() {
        let mut body = BodyCapture::new(5);
        body.add(4, b"ab");
        assert!(body.cut_by_budget());
        let mut capped = BodyCapture::new(2);
        capped.add(4, b"ab");
        assert!(!capped.cut_by_budget(), "cut by the cap, not the budget");
        assert!(!BodyCapture::new(5).cut_by_budget());
    }

    #[test]
    fn zero_cap_counts_only() {
        let mut body = BodyCapture::new(0);
        assert_eq!(body.wanted(10), 0);
        body.add(10, b"");
        assert_eq!(body.size(), 10);
        assert!(body.truncated());
        assert!(BodyCapture::new(0).bytes().is_empty());
    }
}
