//! Redaction at the node. In the filter's `redact.mode: "node"` (its default), values of
//! redacted names that do not have a credential's shape come in clear, marked
//! (`redact_at_node`, docs/wire-format.md), so that CRS can still see an attack in a cookie,
//! an `authorization` header or a body field. The node analyses them in memory, then the
//! [`Sealer`] replaces each by the marker the filter would have written, with the same key
//! (`OOB_MIRROR_REDACT_KEY`): `redacted:` and the first 16 hex digits of
//! HMAC-SHA-256(key, value). That happens before anything leaves memory: the exchange, and
//! the `msg` and `data` of every rule that matched, since CRS echoes what it matched.
//!
//! Host-free: no I/O but reading the key (and the one log line without it).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::analysis::RuleMatch;
use crate::intake::record::{HeaderValue, Record};
use crate::pairing::Exchange;

pub const MARKER_PREFIX: &str = "redacted:";

/// The variable holding the key, the same Secret as the gateway's.
pub const KEY_ENV: &str = "OOB_MIRROR_REDACT_KEY";

/// What the rules' `data` ends with when it was cut (`analysis::modsec::MAX_DATA`).
const CUT: &str = "…";

/// Shortest piece of a value recognised at the end of a cut `data` (shorter pieces are too
/// common to tell from the rule's own text).
const MIN_TAIL: usize = 4;

/// Shortest `Matched Data` part recognised as a piece of a value: one or two bytes say
/// nothing of it, and would hide what the rule saw.
const MIN_PIECE: usize = 3;

pub struct Sealer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never printed.
        f.write_str("Sealer")
    }
}

/// One value to seal, and the forms the rules may show it in.
struct Needle {
    forms: Vec<Vec<u8>>,
    marker: String,
}

impl Sealer {
    pub fn new(key: &[u8]) -> Sealer {
        Sealer { key: key.to_vec() }
    }

    /// The key from [`KEY_ENV`], as the filter reads it (its bytes as they are). Without it a
    /// random key for this process, said in one line on stderr: markers then do not match
    /// the gateway's, but nothing leaks.
    pub fn from_env() -> Sealer {
        match std::env::var(KEY_ENV) {
            Ok(key) if !key.is_empty() => Sealer::new(key.as_bytes()),
            _ => {
                eprintln!(
                    "oob-mirror-node: {KEY_ENV} is not set: values redacted here get markers \
                     under a random key of this process, which do not match the gateway's"
                );
                Sealer::new(&random_key())
            }
        }
    }

    /// `redacted:` and the first 16 hex digits of HMAC-SHA-256(key, value), byte for byte
    /// the filter's marker.
    pub fn marker(&self, value: &[u8]) -> String {
        let mut out = String::with_capacity(MARKER_PREFIX.len() + 16);
        out.push_str(MARKER_PREFIX);
        // HMAC takes a key of any length: this cannot fail.
        if let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key) {
            mac.update(value);
            for b in mac.finalize().into_bytes().iter().take(8) {
                out.push_str(&format!("{b:02x}"));
            }
        }
        out
    }

    /// Everything [`Sealer::seal_text`] and [`Sealer::seal_exchange`] do, in that order: the
    /// rules' `msg` and `data`, then the exchange.
    pub fn seal(&self, ex: &mut Exchange, rules: &mut [RuleMatch]) {
        if ex.redact_at_node.is_empty() {
            return;
        }
        for rule in rules.iter_mut() {
            rule.msg = self.seal_text(ex, &rule.msg);
            rule.data = self.seal_text(ex, &rule.data);
        }
        self.seal_exchange(ex);
    }

    /// Replaces every occurrence of each marked value in the exchange (path, headers and
    /// bodies of both directions) by its marker, then forgets the values: after it the
    /// exchange holds none of them, and [`Sealer::seal_text`] has nothing left to find.
    pub fn seal_exchange(&self, ex: &mut Exchange) {
        let mut values = std::mem::take(&mut ex.redact_at_node);
        values.retain(|v| !v.is_empty());
        // Longest first, so a value that holds another is replaced whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        for value in &values {
            let marker = self.marker(value);
            let m = marker.as_bytes();
            if let Some(path) = replace(ex.path.as_bytes(), value, m, false) {
                ex.path = String::from_utf8_lossy(&path).into_owned();
            }
            let bodies = std::iter::once(&mut ex.request_body)
                .chain(ex.response.as_mut().map(|r| &mut r.body));
            for body in bodies {
                if let Some(sealed) = replace(body, value, m, false) {
                    *body = sealed;
                }
            }
            let mut headers: Vec<&mut (Vec<u8>, Vec<u8>)> = ex.request_headers.iter_mut().collect();
            if let Some(r) = ex.response.as_mut() {
                headers.extend(r.headers.iter_mut());
            }
            for (_, v) in headers {
                if let Some(sealed) = replace(v, value, m, false) {
                    *v = sealed;
                }
            }
        }
    }

    /// A record with every value marked in it (`redact_at_node`) replaced by its marker, in
    /// its path, headers, trailers and body (`raw`, the map as received, is kept): what
    /// `--print-records` prints.
    pub fn seal_record(&self, record: &Record) -> Record {
        let mut out = record.clone();
        let mut values = record.redact_at_node();
        values.retain(|v| !v.is_empty());
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        for value in &values {
            let marker = self.marker(value);
            let m = marker.as_bytes();
            if let Some(path) = out.path.as_ref() {
                if let Some(sealed) = replace(path.as_bytes(), value, m, false) {
                    out.path = Some(String::from_utf8_lossy(&sealed).into_owned());
                }
            }
            if let Some(sealed) = replace(&out.body, value, m, false) {
                out.body = sealed;
            }
            for (_, v) in out.headers.iter_mut().chain(out.trailers.iter_mut()) {
                if let Some(sealed) = replace(v.as_bytes(), value, m, false) {
                    *v = match String::from_utf8(sealed) {
                        Ok(text) => HeaderValue::Str(text),
                        Err(e) => HeaderValue::Bin(e.into_bytes()),
                    };
                }
            }
        }
        // `raw` stays the map as received (what a test checks arrived); nothing prints it.
        out
    }

    /// `text` (a rule's `msg` or `data`) with every marked value of `ex` replaced by its
    /// marker, in any of the forms CRS's transformations show it in (as sent, URL-decoded,
    /// JSON-unescaped, whitespace compressed; any case), and the pieces of a value `data`
    /// quotes: the `Matched Data: X found within VAR: Y` parts X and Y when they are inside a
    /// value, and the end of a `data` cut inside one.
    pub fn seal_text(&self, ex: &Exchange, text: &str) -> String {
        if ex.redact_at_node.is_empty() || text.is_empty() {
            return text.to_owned();
        }
        let mut needles: Vec<Needle> = ex
            .redact_at_node
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| Needle {
                forms: forms(v),
                marker: self.marker(v),
            })
            .collect();
        needles.sort_by_key(|n| std::cmp::Reverse(n.forms.iter().map(Vec::len).max()));
        let mut out = text.as_bytes().to_vec();
        let mut all: Vec<(&[u8], &str)> = needles
            .iter()
            .flat_map(|n| n.forms.iter().map(|f| (f.as_slice(), n.marker.as_str())))
            .collect();
        all.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        for (form, marker) in &all {
            if let Some(sealed) = replace(&out, form, marker.as_bytes(), true) {
                out = sealed;
            }
        }
        let out = String::from_utf8_lossy(&out).into_owned();
        let out = seal_matched_data(&out, &all);
        seal_cut_tail(&out, &all)
    }
}

/// The forms a value may take once CRS has transformed it, each at most once.
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![value.to_vec()];
    for form in [url_decode(value), json_unescape(value)] {
        if !out.contains(&form) {
            out.push(form);
        }
    }
    for i in 0..out.len() {
        if let Some(compressed) = out.get(i).map(|f| compress_whitespace(f)) {
            if !out.contains(&compressed) {
                out.push(compressed);
            }
        }
    }
    out.retain(|f| !f.is_empty());
    out
}

/// `%XX` and `+` decoded (ModSecurity's `urlDecodeUni` on ASCII).
fn url_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut rest = v;
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'%', [h, l, after @ ..]) => match (hex(*h), hex(*l)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    rest = after;
                    continue;
                }
                _ => out.push(b),
            },
            (b'+', _) => out.push(b' '),
            _ => out.push(b),
        }
        rest = tail;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A JSON string's escapes read (what ModSecurity's JSON parser hands the rules).
fn json_unescape(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut rest = v;
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some((&e, tail)) = rest.split_first() else {
            out.push(b);
            break;
        };
        rest = tail;
        match e {
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'u' => {
                let code = rest
                    .get(..4)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .and_then(char::from_u32);
                match code {
                    Some(c) => {
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        rest = rest.get(4..).unwrap_or_default();
                    }
                    None => out.extend_from_slice(b"\\u"),
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Runs of whitespace as one space (`compressWhitespace`).
fn compress_whitespace(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut space = false;
    for &b in v {
        if b.is_ascii_whitespace() {
            if !space {
                out.push(b' ');
            }
            space = true;
        } else {
            out.push(b);
            space = false;
        }
    }
    out
}

/// `hay` with every occurrence of `needle` replaced (ASCII case ignored when `any_case`);
/// `None` when there is none.
fn replace(hay: &[u8], needle: &[u8], with: &[u8], any_case: bool) -> Option<Vec<u8>> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let same = |w: &[u8]| {
        if any_case {
            w.eq_ignore_ascii_case(needle)
        } else {
            w == needle
        }
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut at = 0;
    while let Some(window) = hay.get(at..at + needle.len()) {
        if same(window) {
            let o = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
            o.extend_from_slice(hay.get(copied..at).unwrap_or_default());
            o.extend_from_slice(with);
            at += needle.len();
            copied = at;
        } else {
            at += 1;
        }
    }
    let mut o = out?;
    o.extend_from_slice(hay.get(copied..).unwrap_or_default());
    Some(o)
}

/// The marker of the value one of whose forms holds `piece` (any case), if any.
fn holder<'a>(piece: &str, all: &[(&[u8], &'a str)]) -> Option<&'a str> {
    let p = piece.as_bytes();
    if p.len() < MIN_PIECE || p.starts_with(MARKER_PREFIX.as_bytes()) {
        return None;
    }
    all.iter()
        .find(|(form, _)| form.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p)))
        .map(|(_, marker)| *marker)
}

/// CRS's `Matched Data: X found within VAR: Y`: X (what matched, part of a value) and Y (the
/// variable's value, maybe cut) are replaced when a marked value holds them.
fn seal_matched_data(text: &str, all: &[(&[u8], &str)]) -> String {
    const HEAD: &str = "Matched Data: ";
    const WITHIN: &str = " found within ";
    let Some(rest) = text.strip_prefix(HEAD) else {
        return text.to_owned();
    };
    let Some((x, after)) = rest.split_once(WITHIN) else {
        return text.to_owned();
    };
    let x = match holder(x, all) {
        Some(marker) => marker.to_owned(),
        None => x.to_owned(),
    };
    let after = match after.split_once(": ") {
        Some((var, y)) => {
            let (body, cut) = match y.strip_suffix(CUT) {
                Some(body) => (body, CUT),
                None => (y, ""),
            };
            match holder(body, all) {
                Some(marker) => format!("{var}: {marker}{cut}"),
                None => after.to_owned(),
            }
        }
        None => after.to_owned(),
    };
    format!("{HEAD}{x}{WITHIN}{after}")
}

/// A `data` cut inside a value ends with the beginning of that value: the longest such end
/// (at least [`MIN_TAIL`] bytes) is replaced.
fn seal_cut_tail(text: &str, all: &[(&[u8], &str)]) -> String {
    let Some(body) = text.strip_suffix(CUT) else {
        return text.to_owned();
    };
    let b = body.as_bytes();
    for start in 0..b.len().saturating_sub(MIN_TAIL - 1) {
        if !body.is_char_boundary(start) {
            continue;
        }
        let Some(tail) = b.get(start..) else { continue };
        let found = all.iter().find(|(form, _)| {
            form.len() > tail.len()
                && form
                    .get(..tail.len())
                    .is_some_and(|f| f.eq_ignore_ascii_case(tail))
        });
        if let Some((_, marker)) = found {
            let head = body.get(..start).unwrap_or_default();
            return format!("{head}{marker}{CUT}");
        }
    }
    text.to_owned()
}

/// 32 bytes from the system's random source; should it be unreadable, from the standard
/// library's per-process random hash keys and the clock.
fn random_key() -> Vec<u8> {
    use std::io::Read;
    let mut key = vec![0u8; 32];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key));
    if read.is_err() {
        use std::hash::{BuildHasher, Hasher};
        key.clear();
        for i in 0..4u64 {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            key.extend_from_slice(&h.finish().to_le_bytes());
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::ResponsePart;

    #[test]
    fn markers_are_hmac_sha256_as_rfc_4231_gives_it() {
        // RFC 4231 test cases 1, 2 and 6: the marker is the first 8 bytes of the HMAC.
        let cases: [(Vec<u8>, &[u8], &str); 3] = [
            (vec![0x0b; 20], b"Hi There", "b0344c61d8db3853"),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?",
                "5bdcc146bf60754e",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f",
            ),
        ];
        for (key, data, want) in cases {
            assert_eq!(Sealer::new(&key).marker(data), format!("redacted:{want}"));
        }
    }

    #[test]
    fn the_nodes_marker_is_the_filters() {
        // What the filter (its own HMAC-SHA-256, src/sha256.rs) writes for this value under
        // this key; tests/e2e_redact.rs compares the two crates on many more.
        let sealer = Sealer::new(b"test-key-from-a-kubernetes-secret");
        assert_eq!(sealer.marker(b"' or 1=1--"), FILTER_MARKER);
    }

    /// HMAC-SHA-256("test-key-from-a-kubernetes-secret", "' or 1=1--"), first 8 bytes, as the
    /// filter writes it.
    const FILTER_MARKER: &str = "redacted:995a5b86d109dc94";

    const SQLI: &str = "' or 1=1--";
    const QUERY: &[u8] = b"%3Cscript%3Ealert(1)";
    const FIELD: &str = r#"1 union  select \"x\""#;

    fn exchange() -> Exchange {
        Exchange {
            path: "/p?token=%3Cscript%3Ealert(1)&x=1".into(),
            request_headers: vec![(b"cookie".to_vec(), format!("a=1; q={SQLI}").into_bytes())],
            request_body: format!(r#"{{"secret":"{FIELD}","n":"{SQLI}"}}"#).into_bytes(),
            response: Some(ResponsePart {
                status: 200,
                headers: vec![(b"x-echo".to_vec(), SQLI.as_bytes().to_vec())],
                body: format!("you sent {SQLI}").into_bytes(),
            }),
            redact_at_node: vec![
                SQLI.as_bytes().to_vec(),
                QUERY.to_vec(),
                FIELD.as_bytes().to_vec(),
            ],
            ..Exchange::default()
        }
    }

    #[test]
    fn an_exchange_keeps_no_marked_value_anywhere() {
        let s = Sealer::new(b"k");
        let mut ex = exchange();
        s.seal_exchange(&mut ex);
        let (m, mq, mf) = (
            s.marker(SQLI.as_bytes()),
            s.marker(QUERY),
            s.marker(FIELD.as_bytes()),
        );
        assert_eq!(ex.path, format!("/p?token={mq}&x=1"));
        assert_eq!(ex.request_headers[0].1, format!("a=1; q={m}").into_bytes());
        assert_eq!(
            ex.request_body,
            format!(r#"{{"secret":"{mf}","n":"{m}"}}"#).into_bytes()
        );
        let r = ex.response.as_ref().unwrap();
        assert_eq!(r.headers[0].1, m.as_bytes());
        assert_eq!(r.body, format!("you sent {m}").into_bytes());
        assert!(ex.redact_at_node.is_empty(), "the values are forgotten");
        let all = format!("{ex:?}");
        assert!(!all.contains("or 1=1") && !all.contains("script") && !all.contains("union"));
    }

    #[test]
    fn rule_data_and_msg_never_show_a_marked_value() {
        let s = Sealer::new(b"k");
        let ex = exchange();
        let (m, mq, mf) = (
            s.marker(SQLI.as_bytes()),
            s.marker(QUERY),
            s.marker(FIELD.as_bytes()),
        );
        let seal = |t: &str| s.seal_text(&ex, t);
        // As sent, in another case.
        assert_eq!(
            seal("Matched Data: x found within REQUEST_COOKIES:q: ' OR 1=1--"),
            format!("Matched Data: x found within REQUEST_COOKIES:q: {m}")
        );
        // URL-decoded (t:urlDecodeUni), JSON-unescaped and whitespace compressed.
        assert_eq!(
            seal("found within ARGS:token: <SCRIPT>alert(1)"),
            format!("found within ARGS:token: {mq}")
        );
        assert_eq!(
            seal(r#"found within ARGS:json.secret: 1 union select "x""#),
            format!("found within ARGS:json.secret: {mf}")
        );
        // What matched is a piece of a value; the value itself cut at MAX_DATA.
        assert_eq!(
            seal("Matched Data: ' or 1 found within REQUEST_COOKIES:q: ' or 1=…"),
            format!("Matched Data: {m} found within REQUEST_COOKIES:q: {m}…")
        );
        // A libinjection fingerprint is not part of the value: kept.
        assert_eq!(
            seal(&format!(
                "Matched Data: s&sos found within REQUEST_COOKIES:q: {SQLI}"
            )),
            format!("Matched Data: s&sos found within REQUEST_COOKIES:q: {m}")
        );
        // Any other text cut inside a value.
        assert_eq!(
            seal("SQL Injection in ' or 1…"),
            format!("SQL Injection in {m}…")
        );
        let plain = "Inbound Anomaly Score Exceeded (Total Score: 5)";
        assert_eq!(seal(plain), plain);
        let mut ex = exchange();
        let mut rules = vec![RuleMatch {
            id: 942100,
            msg: format!("SQL Injection Attack in {SQLI}"),
            severity: "CRITICAL".into(),
            data: format!("Matched Data: {SQLI} found within REQUEST_COOKIES:q: {SQLI}"),
        }];
        s.seal(&mut ex, &mut rules);
        assert_eq!(rules[0].msg, format!("SQL Injection Attack in {m}"));
        assert_eq!(
            rules[0].data,
            format!("Matched Data: {m} found within REQUEST_COOKIES:q: {m}")
        );
        assert!(ex.redact_at_node.is_empty());
    }

    #[test]
    fn transformed_forms() {
        assert_eq!(url_decode(b"%27%20or+1%3d1%zz%4"), b"' or 1=1%zz%4");
        assert_eq!(json_unescape(br#"a\"b\\c\u0027\n\q\"#), b"a\"b\\c'\nq\\");
        assert_eq!(compress_whitespace(b"a \t\n b  c"), b"a b c");
        assert_eq!(forms(b"a%20b"), [b"a%20b".to_vec(), b"a b".to_vec()]);
        assert_eq!(
            replace(b"xAbxab", b"ab", b"_", true),
            Some(b"x_x_".to_vec())
        );
        assert_eq!(
            replace(b"xAbxab", b"ab", b"_", false),
            Some(b"xAbx_".to_vec())
        );
        assert_eq!(replace(b"xyz", b"ab", b"_", true), None);
    }

    #[test]
    fn nothing_marked_nothing_changed() {
        let s = Sealer::new(b"k");
        let mut ex = Exchange {
            path: format!("/p?q={SQLI}"),
            ..Exchange::default()
        };
        let before = ex.clone();
        let mut rules = vec![RuleMatch {
            id: 1,
            msg: SQLI.into(),
            severity: String::new(),
            data: SQLI.into(),
        }];
        s.seal(&mut ex, &mut rules);
        assert_eq!(ex, before);
        assert_eq!(rules[0].data, SQLI);
        assert_eq!(format!("{s:?}"), "Sealer");
    }
}
