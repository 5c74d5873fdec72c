//! A small strict JSON reader (RFC 8259) for the plugin configuration. Written here, not taken
//! from serde_json, for the module's size: serde_json with serde's derives, serde_path_to_error
//! and the float formatting their error texts bring cost 73 KB of the 250 KB budget.
//!
//! Numbers are kept as their text; objects keep their keys in order, duplicates included (the
//! reader of the configuration refuses them). Nesting is bounded, so no input can exhaust the
//! stack.

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number as written (valid JSON number syntax).
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

/// Deeper nesting than this is refused (the configuration is 3 levels deep).
const MAX_DEPTH: usize = 64;

/// Parses one JSON value; only whitespace may follow it.
pub fn parse(bytes: &[u8]) -> Result<Json, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut p = Parser {
        s: text.as_bytes(),
        i: 0,
    };
    let value = p.value(0)?;
    p.ws();
    if p.i < p.s.len() {
        return Err(p.err("trailing characters after the JSON value"));
    }
    Ok(value)
}

impl Json {
    /// What a refusal calls this value's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Num(_) => "a number",
            Json::Str(_) => "a string",
            Json::Arr(_) => "an array",
            Json::Obj(_) => "an object",
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.s.get(self.i..self.i + word.len()) == Some(word.as_bytes()) {
            self.i += word.len();
            Ok(value)
        } else {
            Err(self.err("expected a JSON value"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        self.ws();
        match self.peek() {
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.eat(b'}') {
                    return Ok(Json::Obj(fields));
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return Err(self.err("expected a key"));
                    }
                    let key = self.string()?;
                    self.ws();
                    if !self.eat(b':') {
                        return Err(self.err("expected ':'"));
                    }
                    fields.push((key, self.value(depth + 1)?));
                    self.ws();
                    if self.eat(b'}') {
                        return Ok(Json::Obj(fields));
                    }
                    if !self.eat(b',') {
                        return Err(self.err("expected ',' or '}'"));
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']') {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b']') {
                        return Ok(Json::Arr(items));
                    }
                    if !self.eat(b',') {
                        return Err(self.err("expected ',' or ']'"));
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.err("expected a JSON value")),
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.i;
        self.eat(b'-');
        let lead = self.peek();
        let n = self.digits();
        if n == 0 || (lead == Some(b'0') && n > 1) {
            return Err(self.err("invalid number"));
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.err("invalid number"));
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        let text = self.s.get(start..self.i).unwrap_or_default();
        Ok(Json::Num(String::from_utf8_lossy(text).into_owned()))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..4 {
            let d = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.err("invalid \\u escape"))?;
            v = v * 16 + d;
            self.i += 1;
        }
        Ok(v)
    }

    /// A string, the opening quote at the cursor. The input is valid UTF-8 (checked once).
    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let b = self.peek().ok_or_else(|| self.err("unterminated string"))?;
            self.i += 1;
            match b {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                    self.i += 1;
                    let c = match e {
                        b'"' | b'\\' | b'/' => char::from(e),
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.err("invalid escape")),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
                0..=0x1f => return Err(self.err("control character in a string")),
                _ => out.push(b),
            }
        }
        String::from_utf8(out).map_err(|_| self.err("not UTF-8"))
    }

    /// `\uXXXX`, or a surrogate pair of two; a lone surrogate is refused.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if !(self.eat(b'\\') && self.eat(b'u')) {
                return Err(self.err("lone surrogate"));
            }
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(self.err("lone surrogate"));
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or_else(|| self.err("lone surrogate"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn s(v: &str) -> Json {
        Json::Str(v.to_owned())
    }

    #[test]
    fn values() {
        assert_eq!(
            parse(br#" {"a": [1, -2.5e3, true, false, null], "b": {}, "c": "x"} "#).unwrap(),
            Json::Obj(vec![
                (
                    "a".into(),
                    Json::Arr(vec![
                        Json::Num("1".into()),
                        Json::Num("-2.5e3".into()),
                        Json::Bool(true),
                        Json::Bool(false),
                        Json::Null
                    ])
                ),
                ("b".into(), Json::Obj(vec![])),
                ("c".into(), s("x")),
            ])
        );
        assert_eq!(parse(b"[]").unwrap(), Json::Arr(vec![]));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            parse(br#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00""#).unwrap(),
            s("a\"\\/\u{8}\u{c}\n\r\té😀")
        );
        assert_eq!(parse("\"zürich\"".as_bytes()).unwrap(), s("zürich"));
        for bad in [
            &br#""\ud83d""#[..],
            br#""\ude00""#,
            br#""\ud83dx""#,
            br#""\x""#,
            br#""\u12""#,
            b"\"a\nb\"",
            b"\"abc",
            b"\"\xff\"",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "[1,]",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{1:2}",
            "01",
            "-",
            "1.",
            "1e",
            ".5",
            "+1",
            "tru",
            "nul",
            "{} x",
            "{}{}",
            "[1 2]",
            "\u{a0}1",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(parse(b"{} junk").unwrap_err().contains("trailing"));
        let deep = "[".repeat(10_000);
        assert!(parse(deep.as_bytes()).unwrap_err().contains("deep"));
        assert!(parse(format!("{}{}", "[".repeat(60), "]".repeat(60)).as_bytes()).is_ok());
    }

    #[test]
    fn duplicate_keys_are_kept_in_order() {
        assert_eq!(
            parse(br#"{"a":1,"a":2}"#).unwrap(),
            Json::Obj(vec![
                ("a".into(), Json::Num("1".into())),
                ("a".into(), Json::Num("2".into()))
            ])
        );
    }
}
