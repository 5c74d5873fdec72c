//! Redaction: secrets are replaced before a record leaves the worker, by a marker that keeps
//! correlation without the secret: `redacted:` and the first 16 hex digits of
//! HMAC-SHA-256(key, value). The same value under the same key gives the same marker (so two
//! requests with one token can be told apart from two with different tokens), and nothing
//! about the value can be read back without the key.
//!
//! - header values by name (for `authorization` and `proxy-authorization` the scheme stays);
//! - query parameters by name, in the path;
//! - fields by key in JSON and `application/x-www-form-urlencoded` bodies, streamed: the same
//!   output whatever the chunk boundaries, including a body cut inside a secret.

use crate::body::BodyCapture;
use crate::config::RedactConfig;
use crate::record::HeaderList;
use crate::sha256::Hmac;

pub const MARKER_PREFIX: &str = "redacted:";

/// Bytes of a secret value that go into its marker; the rest of a longer value is dropped.
const MAX_SECRET: usize = 4096;

/// Longest key compared against the field names (longer keys are never secret names).
const MAX_KEY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

#[derive(Debug, Clone)]
pub struct Redactor {
    key: Hmac,
    headers: Vec<String>,
    query: Vec<String>,
    fields: Vec<String>,
}

impl Redactor {
    /// `None` when redaction is off.
    pub fn new(config: &RedactConfig, key: Vec<u8>) -> Option<Redactor> {
        let lower = |list: &[String]| list.iter().map(|n| n.to_ascii_lowercase()).collect();
        config.enabled.then(|| Redactor {
            key: Hmac::new(&key),
            headers: lower(&config.headers),
            query: lower(&config.query_params),
            fields: lower(&config.body_fields),
        })
    }

    pub fn marker(&self, value: &[u8]) -> String {
        let mac = self.key.mac(value);
        let mut out = String::with_capacity(MARKER_PREFIX.len() + 16);
        out.push_str(MARKER_PREFIX);
        for b in mac.iter().take(8) {
            for nibble in [b >> 4, b & 15] {
                out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
            }
        }
        out
    }

    /// Replaces the values of the secret headers in place.
    pub fn headers(&self, list: &mut HeaderList) {
        for (name, value) in list.iter_mut() {
            if self.headers.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                *value = self.header_value(name, value);
            }
        }
    }

    fn header_value(&self, name: &str, value: &[u8]) -> Vec<u8> {
        let keeps_scheme = name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization");
        match value.iter().position(|b| *b == b' ') {
            Some(at) if keeps_scheme => {
                let (scheme, rest) = value.split_at(at);
                let mut out = scheme.to_vec();
                out.push(b' ');
                out.extend_from_slice(self.marker(rest.get(1..).unwrap_or_default()).as_bytes());
                out
            }
            _ => self.marker(value).into_bytes(),
        }
    }

    /// Replaces the values of secret query parameters in a path (`/p?a=1&token=x`); `None`
    /// when it has none (the common case costs no allocation).
    pub fn path(&self, path: &str) -> Option<String> {
        let (head, query) = path.split_once('?')?;
        let secret = query.split('&').any(|param| {
            let name = param.split('=').next().unwrap_or_default();
            param.contains('=') && is_name(&self.query, name.as_bytes())
        });
        if !secret {
            return None;
        }
        let mut out = Vec::with_capacity(path.len());
        out.extend_from_slice(head.as_bytes());
        out.push(b'?');
        let mut form = Stream::new(BodyKind::Form);
        form.feed(self, &self.query, query.as_bytes(), &mut out);
        form.finish(self, &mut out);
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// What the body under these headers is, for redaction, and whether it is sent with a
    /// `content-encoding` (then it cannot be read here).
    pub fn body_of(headers: &HeaderList) -> (Option<BodyKind>, bool) {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
        };
        let encoded =
            header("content-encoding").is_some_and(|e| !e.eq_ignore_ascii_case(b"identity"));
        (Redactor::body_kind(header("content-type")), encoded)
    }

    /// What a body with this `content-type` is, for redaction; `None`: left as it is.
    pub fn body_kind(content_type: Option<&[u8]>) -> Option<BodyKind> {
        let ct = content_type?;
        let essence = ct
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        let ends = |suffix: &[u8]| {
            essence.len() >= suffix.len()
                && essence
                    .get(essence.len() - suffix.len()..)
                    .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
        };
        if essence.eq_ignore_ascii_case(b"application/json") || ends(b"+json") {
            Some(BodyKind::Json)
        } else if essence.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
            Some(BodyKind::Form)
        } else {
            None
        }
    }

    /// A whole captured body (possibly a prefix), redacted.
    pub fn body(&self, kind: BodyKind, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut stream = Stream::new(kind);
        stream.feed(self, &self.fields, bytes, &mut out);
        stream.finish(self, &mut out);
        out
    }

    /// Redacts a record's headers, trailers and body in place (`path` for a request).
    /// A JSON or form body sent compressed cannot be read here: it is withheld (empty,
    /// marked truncated, its true size kept).
    pub fn record(
        &self,
        headers: &mut HeaderList,
        trailers: &mut HeaderList,
        body: &mut BodyCapture,
    ) {
        let (kind, encoded) = Redactor::body_of(headers);
        match kind {
            Some(_) if encoded => body.replace(Vec::new(), true),
            Some(kind) if !body.bytes().is_empty() => {
                let redacted = self.body(kind, body.bytes());
                body.replace(redacted, false);
            }
            _ => {}
        }
        self.headers(headers);
        self.headers(trailers);
    }

    /// A redactor for a body that arrives in chunks (ext_proc).
    pub fn body_stream(&self, kind: BodyKind) -> Stream {
        Stream::new(kind)
    }
}

fn is_name(names: &[String], candidate: &[u8]) -> bool {
    names
        .iter()
        .any(|n| n.as_bytes().eq_ignore_ascii_case(candidate))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between tokens.
    Outside,
    /// In a string that is not secret; `escaped` after a backslash.
    Text { escaped: bool },
    /// After a secret key's `:`, before its value.
    BeforeSecret,
    /// In a secret string value.
    SecretText { escaped: bool },
    /// In a secret object or array: nesting depth, and whether in a string inside it.
    SecretNested {
        depth: u32,
        in_text: bool,
        escaped: bool,
    },
    /// In a secret number, `true`, `false` or `null`.
    SecretScalar,
    /// Form: in a name.
    FormName,
    /// Form: in a value that is kept.
    FormValue,
    /// Form: in a secret value.
    FormSecret,
}

/// Streaming redaction of one body: feed chunks, then finish. Holds at most one secret value
/// (up to `MAX_SECRET` bytes) and one key (up to `MAX_KEY`).
#[derive(Debug, Clone)]
pub struct Stream {
    state: State,
    /// The last string (JSON) or the current name (form), while it may still be a field name.
    key: Vec<u8>,
    key_too_long: bool,
    /// The last complete JSON string may be a key; a `:` next makes it one.
    key_done: bool,
    secret: Vec<u8>,
}

impl Stream {
    fn new(kind: BodyKind) -> Stream {
        Stream {
            state: if kind == BodyKind::Form {
                State::FormName
            } else {
                State::Outside
            },
            key: Vec::new(),
            key_too_long: false,
            key_done: false,
            secret: Vec::new(),
        }
    }

    /// Redacts the next chunk of the body into `out`, against `r`'s body fields.
    pub fn push(&mut self, r: &Redactor, chunk: &[u8], out: &mut Vec<u8>) {
        self.feed(r, &r.fields, chunk, out);
    }

    fn key_push(&mut self, b: u8) {
        if self.key.len() < MAX_KEY {
            self.key.push(b);
        } else {
            self.key_too_long = true;
        }
    }

    fn key_reset(&mut self) {
        self.key.clear();
        self.key_too_long = false;
        self.key_done = false;
    }

    fn secret_push(&mut self, b: u8) {
        if self.secret.len() < MAX_SECRET {
            self.secret.push(b);
        }
    }

    /// Writes the marker of the secret held, quoted when `quote`.
    fn emit(&mut self, r: &Redactor, quote: bool, out: &mut Vec<u8>) {
        if quote {
            out.push(b'"');
        }
        out.extend_from_slice(r.marker(&self.secret).as_bytes());
        if quote {
            out.push(b'"');
        }
        self.secret.clear();
    }

    fn feed(&mut self, r: &Redactor, names: &[String], chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while let Some((&b, tail)) = rest.split_first() {
            // Inside a plain JSON string, copy up to the next quote or backslash in one go.
            if let State::Text { escaped: false } = self.state {
                let run = rest
                    .iter()
                    .position(|c| *c == b'"' || *c == b'\\')
                    .unwrap_or(rest.len());
                if run > 0 {
                    let (plain, after) = rest.split_at(run);
                    out.extend_from_slice(plain);
                    let room = MAX_KEY.saturating_sub(self.key.len());
                    self.key
                        .extend_from_slice(plain.get(..room.min(run)).unwrap_or_default());
                    self.key_too_long |= run > room;
                    rest = after;
                    continue;
                }
            }
            // Between tokens, copy up to the next quote or colon in one go.
            if self.state == State::Outside {
                let run = rest
                    .iter()
                    .position(|c| *c == b'"' || *c == b':')
                    .unwrap_or(rest.len());
                if run > 0 {
                    let (plain, after) = rest.split_at(run);
                    out.extend_from_slice(plain);
                    if !plain.iter().all(u8::is_ascii_whitespace) {
                        self.key_done = false;
                    }
                    rest = after;
                    continue;
                }
            }
            self.byte(r, names, b, out);
            rest = tail;
        }
    }

    fn byte(&mut self, r: &Redactor, names: &[String], b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::Outside => {
                match b {
                    b'"' => {
                        self.key_reset();
                        self.state = State::Text { escaped: false };
                    }
                    b':' if self.key_done && !self.key_too_long && is_name(names, &self.key) => {
                        self.state = State::BeforeSecret;
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => self.key_done = false,
                }
                out.push(b);
            }
            State::Text { escaped } => {
                out.push(b);
                match (escaped, b) {
                    (false, b'"') => {
                        self.key_done = true;
                        self.state = State::Outside;
                    }
                    (false, b'\\') => {
                        self.key_push(b);
                        self.state = State::Text { escaped: true };
                    }
                    _ => {
                        self.key_push(b);
                        self.state = State::Text { escaped: false };
                    }
                }
            }
            State::BeforeSecret => match b {
                b' ' | b'\t' | b'\n' | b'\r' => out.push(b),
                b'"' => {
                    out.push(b);
                    self.state = State::SecretText { escaped: false };
                }
                b'{' | b'[' => {
                    self.secret_push(b);
                    self.state = State::SecretNested {
                        depth: 1,
                        in_text: false,
                        escaped: false,
                    };
                }
                _ => {
                    self.secret_push(b);
                    self.state = State::SecretScalar;
                }
            },
            State::SecretText { escaped } => match (escaped, b) {
                (false, b'"') => {
                    self.emit(r, false, out);
                    out.push(b);
                    self.key_reset();
                    self.state = State::Outside;
                }
                _ => {
                    self.secret_push(b);
                    self.state = State::SecretText {
                        escaped: !escaped && b == b'\\',
                    };
                }
            },
            State::SecretNested {
                depth,
                in_text,
                escaped,
            } => {
                self.secret_push(b);
                let next = match (in_text, escaped, b) {
                    (true, false, b'\\') => (depth, true, true),
                    (true, false, b'"') => (depth, false, false),
                    (true, _, _) => (depth, true, false),
                    (false, _, b'"') => (depth, true, false),
                    (false, _, b'{' | b'[') => (depth + 1, false, false),
                    (false, _, b'}' | b']') => (depth - 1, false, false),
                    _ => (depth, false, false),
                };
                if next.0 == 0 {
                    self.emit(r, true, out);
                    self.key_reset();
                    self.state = State::Outside;
                } else {
                    self.state = State::SecretNested {
                        depth: next.0,
                        in_text: next.1,
                        escaped: next.2,
                    };
                }
            }
            State::SecretScalar => match b {
                b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r' => {
                    self.emit(r, true, out);
                    self.key_reset();
                    self.state = State::Outside;
                    self.byte(r, names, b, out);
                }
                _ => self.secret_push(b),
            },
            State::FormName => {
                out.push(b);
                match b {
                    b'=' if !self.key_too_long && is_name(names, &self.key) => {
                        self.state = State::FormSecret;
                    }
                    b'=' => self.state = State::FormValue,
                    b'&' => self.key_reset(),
                    _ => self.key_push(b),
                }
            }
            State::FormValue => {
                out.push(b);
                if b == b'&' {
                    self.key_reset();
                    self.state = State::FormName;
                }
            }
            State::FormSecret => {
                if b == b'&' {
                    self.emit(r, false, out);
                    out.push(b);
                    self.key_reset();
                    self.state = State::FormName;
                } else {
                    self.secret_push(b);
                }
            }
        }
    }

    /// The body ended (or its captured prefix did): a secret cut short is still replaced.
    pub fn finish(&mut self, r: &Redactor, out: &mut Vec<u8>) {
        match self.state {
            State::SecretText { .. } | State::FormSecret => self.emit(r, false, out),
            State::SecretNested { .. } | State::SecretScalar => self.emit(r, true, out),
            _ => {}
        }
        self.state = State::Outside;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn redactor() -> Redactor {
        Redactor::new(&RedactConfig::default(), b"k".to_vec()).unwrap()
    }

    fn m(v: &str) -> String {
        redactor().marker(v.as_bytes())
    }

    fn json(body: &str) -> String {
        String::from_utf8(redactor().body(BodyKind::Json, body.as_bytes())).unwrap()
    }

    #[test]
    fn markers_are_keyed_and_stable() {
        let r = redactor();
        assert_eq!(r.marker(b"s3cret"), r.marker(b"s3cret"));
        assert_ne!(r.marker(b"s3cret"), r.marker(b"s3cret2"));
        let other = Redactor::new(&RedactConfig::default(), b"other".to_vec()).unwrap();
        assert_ne!(r.marker(b"s3cret"), other.marker(b"s3cret"));
        let marker = r.marker(b"x");
        assert!(marker.starts_with("redacted:"));
        assert_eq!(marker.len(), "redacted:".len() + 16);
        assert!(marker["redacted:".len()..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn headers_by_name_keeping_the_authorization_scheme() {
        let mut list: HeaderList = [
            ("Authorization", "Bearer eyJhbGciOi.abc.def"),
            ("cookie", "session=abc; theme=dark"),
            ("x-api-key", "k-123"),
            ("accept", "*/*"),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("set-cookie", "id=1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        redactor().headers(&mut list);
        let text: Vec<(String, String)> = list
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(text[0].1, format!("Bearer {}", m("eyJhbGciOi.abc.def")));
        assert_eq!(text[1].1, m("session=abc; theme=dark"));
        assert_eq!(text[2].1, m("k-123"));
        assert_eq!(text[3].1, "*/*");
        assert_eq!(text[4].1, format!("Basic {}", m("dXNlcjpwYXNz")));
        assert_eq!(text[5].1, m("id=1"));
    }

    #[test]
    fn query_parameters_by_name() {
        let r = redactor();
        assert_eq!(r.path("/a/b"), None);
        assert_eq!(r.path("/a/b?page=2&q=token"), None);
        assert_eq!(
            r.path("/cb?code=1&access_token=tok&x=&TOKEN=t2").unwrap(),
            format!("/cb?code=1&access_token={}&x=&TOKEN={}", m("tok"), m("t2"))
        );
        assert_eq!(r.path("/p?token"), None);
    }

    #[test]
    fn json_fields_at_any_depth_and_of_any_type() {
        assert_eq!(
            json(r#"{"user":"ann","password":"p@ss\"w","n":{"token": 12345 ,"ok":true}}"#),
            format!(
                r#"{{"user":"ann","password":"{}","n":{{"token": "{}" ,"ok":true}}}}"#,
                m(r#"p@ss\"w"#),
                m("12345")
            )
        );
        assert_eq!(
            json(r#"[{"secret":{"a":[1,"}"]},"b":"password"}]"#),
            format!(
                r#"[{{"secret":"{}","b":"password"}}]"#,
                m(r#"{"a":[1,"}"]}"#)
            )
        );
        // A key's name as a value is not a key; keys are matched whole, any case.
        assert_eq!(
            json(r#"{"x":"token","tokens":1}"#),
            r#"{"x":"token","tokens":1}"#
        );
        assert_eq!(
            json(r#"{"Password":null}"#),
            format!(r#"{{"Password":"{}"}}"#, m("null"))
        );
    }

    #[test]
    fn a_prefix_cut_inside_a_secret_is_still_redacted() {
        assert_eq!(
            json(r#"{"user":"ann","password":"hunt"#),
            format!(r#"{{"user":"ann","password":"{}"#, m("hunt"))
        );
        assert_eq!(
            json(r#"{"token":123"#),
            format!(r#"{{"token":"{}""#, m("123"))
        );
        let form = redactor().body(BodyKind::Form, b"user=ann&password=hu");
        assert_eq!(
            String::from_utf8(form).unwrap(),
            format!("user=ann&password={}", m("hu"))
        );
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let r = redactor();
        let body = br#"{"a":[1,2],"client_secret":"xyz","refresh_token":{"v":"w"},"z":"password"}"#;
        let whole = r.body(BodyKind::Json, body);
        for step in 1..body.len() {
            let mut out = Vec::new();
            let mut s = r.body_stream(BodyKind::Json);
            for chunk in body.chunks(step) {
                s.push(&r, chunk, &mut out);
            }
            s.finish(&r, &mut out);
            assert_eq!(out, whole, "chunks of {step}");
        }
        assert!(!String::from_utf8_lossy(&whole).contains("xyz"));
    }

    #[test]
    fn form_bodies() {
        let out = redactor().body(
            BodyKind::Form,
            b"grant_type=password&password=p%40ss&api_key=k&x=1",
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!(
                "grant_type=password&password={}&api_key={}&x=1",
                m("p%40ss"),
                m("k")
            )
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Redactor::body_kind(Some(b"application/json; charset=utf-8")),
            Some(BodyKind::Json)
        );
        assert_eq!(
            Redactor::body_kind(Some(b"application/problem+json")),
            Some(BodyKind::Json)
        );
        assert_eq!(
            Redactor::body_kind(Some(b"Application/X-WWW-Form-Urlencoded")),
            Some(BodyKind::Form)
        );
        assert_eq!(Redactor::body_kind(Some(b"text/plain")), None);
        assert_eq!(Redactor::body_kind(None), None);
    }

    #[test]
    fn long_secrets_are_bounded() {
        let long = "a".repeat(10_000);
        let out = json(&format!(r#"{{"token":"{long}","b":1}}"#));
        assert_eq!(
            out,
            format!(r#"{{"token":"{}","b":1}}"#, m(&long[..MAX_SECRET]))
        );
    }
}
