//! Header and trailer fields in arrival order, duplicates kept, values as raw bytes.
//!
//! The fields live in one buffer with the place of each name and value beside it. A map read
//! from the Proxy-Wasm host arrives as one serialized buffer; kept as it is, a 9-header map
//! costs two allocations instead of two per header (about 5.8 k instructions per map in
//! Envoy, docs/performance.md).

use std::fmt;

#[derive(Clone, Copy)]
struct Span {
    at: u32,
    len: u32,
}

#[derive(Clone, Copy)]
struct Field {
    name: Span,
    value: Span,
}

/// Names are valid UTF-8 (checked when a field is added); values are any bytes.
#[derive(Clone, Default)]
pub struct HeaderList {
    data: Vec<u8>,
    fields: Vec<Field>,
}

fn span(at: usize, len: usize) -> Option<Span> {
    Some(Span {
        at: u32::try_from(at).ok()?,
        len: u32::try_from(len).ok()?,
    })
}

fn le32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

impl HeaderList {
    pub fn new() -> Self {
        HeaderList::default()
    }

    /// A map as Proxy-Wasm's `proxy_get_header_map_pairs` serializes it: the number of pairs
    /// (u32 LE), each pair's name and value lengths (u32 LE each), then each name and value
    /// followed by a NUL. The buffer is kept, not copied. A malformed tail is left out; a name
    /// that is not UTF-8 (Envoy's never are) is kept as lossy text.
    pub fn from_proxy_wasm_map(data: Vec<u8>) -> Self {
        let count = le32(&data, 0).unwrap_or(0);
        let mut fields = Vec::with_capacity(count.min(data.len() / 10));
        let mut lossy = Vec::new();
        let mut p = count.saturating_mul(8).saturating_add(4);
        for n in 0..count {
            let entry = 4 + n * 8;
            let (Some(name_len), Some(value_len)) = (le32(&data, entry), le32(&data, entry + 4))
            else {
                break;
            };
            let name_end = p.saturating_add(name_len);
            let value_at = name_end.saturating_add(1);
            let value_end = value_at.saturating_add(value_len);
            let (Some(name), Some(_)) = (data.get(p..name_end), data.get(value_at..value_end))
            else {
                break;
            };
            let (Some(name_span), Some(value_span)) =
                (span(p, name_len), span(value_at, value_len))
            else {
                break;
            };
            if std::str::from_utf8(name).is_err() {
                lossy.push((fields.len(), String::from_utf8_lossy(name).into_owned()));
            }
            fields.push(Field {
                name: name_span,
                value: value_span,
            });
            p = value_end.saturating_add(1);
        }
        let mut list = HeaderList { data, fields };
        for (index, name) in lossy {
            if let Some(at) = list.append(name.as_bytes()) {
                if let Some(field) = list.fields.get_mut(index) {
                    field.name = at;
                }
            }
        }
        list
    }

    fn append(&mut self, bytes: &[u8]) -> Option<Span> {
        let at = span(self.data.len(), bytes.len())?;
        self.data.extend_from_slice(bytes);
        Some(at)
    }

    pub fn push(&mut self, name: &str, value: &[u8]) {
        self.push_checked(name.as_bytes(), value);
    }

    /// A field whose name comes as bytes from a host (Envoy's are ASCII tokens); a name that
    /// is not UTF-8 is kept as lossy text.
    pub fn push_bytes(&mut self, name: &[u8], value: &[u8]) {
        match std::str::from_utf8(name) {
            Ok(_) => self.push_checked(name, value),
            Err(_) => self.push(&String::from_utf8_lossy(name), value),
        }
    }

    /// Room for `fields` fields of `bytes` bytes of names and values in all.
    pub fn with_capacity(fields: usize, bytes: usize) -> Self {
        HeaderList {
            data: Vec::with_capacity(bytes),
            fields: Vec::with_capacity(fields),
        }
    }

    /// `name` must be valid UTF-8 (it comes from a list that checked it).
    fn push_checked(&mut self, name: &[u8], value: &[u8]) {
        if let (Some(name), Some(value)) = (self.append(name), self.append(value)) {
            self.fields.push(Field { name, value });
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    #[inline]
    fn bytes(&self, span: Span) -> &[u8] {
        let at = span.at as usize;
        self.data
            .get(at..at.saturating_add(span.len as usize))
            .unwrap_or_default()
    }

    fn pair(&self, field: &Field) -> (&str, &[u8]) {
        let name = std::str::from_utf8(self.bytes(field.name)).unwrap_or_default();
        (name, self.bytes(field.value))
    }

    /// Every field in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().map(|field| self.pair(field))
    }

    /// Every field in order, the name as bytes (valid UTF-8): the per-exchange paths, which
    /// would otherwise check each name's UTF-8 again at every look-up.
    #[inline]
    pub fn iter_bytes(&self) -> impl ExactSizeIterator<Item = (&[u8], &[u8])> + '_ {
        self.fields
            .iter()
            .map(|field| (self.bytes(field.name), self.bytes(field.value)))
    }

    /// The field at `index`.
    pub fn get_index(&self, index: usize) -> Option<(&str, &[u8])> {
        self.fields.get(index).map(|field| self.pair(field))
    }

    /// The first value of the field with exactly this name.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter_bytes()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, v)| v)
    }

    /// The first value of the field with this name in any case.
    #[inline]
    pub fn get_ignore_case(&self, name: &str) -> Option<&[u8]> {
        self.iter_bytes()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of a field as text (pseudo-headers); lossless for valid UTF-8.
    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|value| String::from_utf8_lossy(value).into_owned())
    }

    /// Replaces the value of the field at `index` (redaction); out of range: nothing.
    pub fn set_value(&mut self, index: usize, value: &[u8]) {
        if index >= self.fields.len() {
            return;
        }
        if let Some(at) = self.append(value) {
            if let Some(field) = self.fields.get_mut(index) {
                field.value = at;
            }
        }
    }

    /// Bytes of all names and values.
    #[inline]
    pub fn content_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| f.name.len as usize + f.value.len as usize)
            .sum()
    }

    /// Splits off the pseudo-headers (names starting with `:`), which the record keeps as
    /// fields of its own, from the regular headers it keeps as a list; order kept in both.
    pub fn split_pseudo(mut self) -> (HeaderList, HeaderList) {
        let mut pseudo = HeaderList::with_capacity(4, 128);
        for (name, value) in self.iter_bytes() {
            if name.first() == Some(&b':') {
                pseudo.push_checked(name, value);
            }
        }
        if !pseudo.is_empty() {
            let data = &self.data;
            self.fields.retain(|f| {
                data.get(f.name.at as usize)
                    .is_none_or(|first| *first != b':')
            });
        }
        (pseudo, self)
    }
}

impl PartialEq for HeaderList {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for HeaderList {}

impl fmt::Debug for HeaderList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, String::from_utf8_lossy(value))),
            )
            .finish()
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> FromIterator<(N, V)> for HeaderList {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut list = HeaderList::new();
        for (name, value) in iter {
            list.push(name.as_ref(), value.as_ref());
        }
        list
    }
}

impl<N: AsRef<str>, V: AsRef<[u8]>> From<Vec<(N, V)>> for HeaderList {
    fn from(pairs: Vec<(N, V)>) -> Self {
        pairs.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Proxy-Wasm's serialization of a map (what the host writes).
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend_from_slice(&(name.len() as u32).to_le_bytes());
            out.extend_from_slice(&(value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend_from_slice(name);
            out.push(0);
            out.extend_from_slice(value);
            out.push(0);
        }
        out
    }

    fn pairs(list: &HeaderList) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_owned(), v.to_vec()))
            .collect()
    }

    #[test]
    fn a_host_map_is_read_in_place_in_order_with_duplicates() {
        let bytes = serialize(&[
            (b":method", b"GET"),
            (b"x-dup", b"1"),
            (b":path", b"/a?b"),
            (b"x-dup", b"\xff\x00raw"),
            (b"empty", b""),
        ]);
        let list = HeaderList::from_proxy_wasm_map(bytes);
        assert_eq!(
            pairs(&list),
            vec![
                (":method".to_owned(), b"GET".to_vec()),
                ("x-dup".to_owned(), b"1".to_vec()),
                (":path".to_owned(), b"/a?b".to_vec()),
                ("x-dup".to_owned(), b"\xff\x00raw".to_vec()),
                ("empty".to_owned(), Vec::new()),
            ]
        );
        assert_eq!(list.get("x-dup"), Some(&b"1"[..]));
        assert_eq!(list.get_ignore_case("X-DUP"), Some(&b"1"[..]));
        assert_eq!(list.text(":path").as_deref(), Some("/a?b"));
        assert_eq!(list.content_len(), 7 + 3 + 5 + 1 + 5 + 4 + 5 + 5 + 5);
    }

    #[test]
    fn empty_and_malformed_host_maps() {
        assert!(HeaderList::from_proxy_wasm_map(Vec::new()).is_empty());
        assert!(HeaderList::from_proxy_wasm_map(serialize(&[])).is_empty());
        let mut bytes = serialize(&[(b"a", b"1"), (b"b", b"2")]);
        // The second value runs past the end: only the first pair is kept.
        bytes.truncate(bytes.len() - 2);
        let list = HeaderList::from_proxy_wasm_map(bytes);
        assert_eq!(pairs(&list), vec![("a".to_owned(), b"1".to_vec())]);
        // A count larger than the table.
        let list = HeaderList::from_proxy_wasm_map(vec![255, 255, 255, 255, 1, 0]);
        assert!(list.is_empty());
        // A name that is not UTF-8 is kept as lossy text.
        let list = HeaderList::from_proxy_wasm_map(serialize(&[(b"n\xff", b"v"), (b"ok", b"w")]));
        assert_eq!(
            pairs(&list),
            vec![
                ("n\u{fffd}".to_owned(), b"v".to_vec()),
                ("ok".to_owned(), b"w".to_vec())
            ]
        );
    }

    #[test]
    fn pseudo_headers_are_split_off_in_order() {
        let list = HeaderList::from_proxy_wasm_map(serialize(&[
            (b":method", b"GET"),
            (b"x-dup", b"1"),
            (b":path", b"/a?b"),
            (b"x-dup", b"2"),
        ]));
        let (pseudo, regular) = list.split_pseudo();
        assert_eq!(
            pseudo,
            HeaderList::from(vec![(":method", "GET"), (":path", "/a?b")])
        );
        assert_eq!(
            regular,
            HeaderList::from(vec![("x-dup", "1"), ("x-dup", "2")])
        );
        assert_eq!(pseudo.text(":scheme"), None);
    }

    #[test]
    fn fields_pushed_as_bytes() {
        let mut list = HeaderList::with_capacity(2, 16);
        list.push_bytes(b"a", b"1");
        list.push_bytes(b"n\xff", b"\xfe");
        assert_eq!(
            pairs(&list),
            vec![
                ("a".to_owned(), b"1".to_vec()),
                ("n\u{fffd}".to_owned(), b"\xfe".to_vec())
            ]
        );
    }

    #[test]
    fn values_are_replaced_in_place() {
        let mut list = HeaderList::from(vec![("a", "1"), ("b", "2"), ("c", "3")]);
        list.set_value(1, b"redacted");
        list.set_value(7, b"ignored");
        assert_eq!(
            list,
            HeaderList::from(vec![("a", "1"), ("b", "redacted"), ("c", "3")])
        );
        assert_ne!(list, HeaderList::from(vec![("a", "1")]));
        assert_eq!(
            format!("{list:?}"),
            r#"[("a", "1"), ("b", "redacted"), ("c", "3")]"#
        );
    }
}
