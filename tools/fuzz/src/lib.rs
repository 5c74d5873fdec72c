//! Support for the fuzz targets: a msgpack decoder written from the msgpack specification,
//! sharing no code with the filter's hand-written encoder nor with `rmpv` (the unit tests' and
//! the sink's reader), so that a shared misreading of the format cannot hide an encoding bug.

/// One decoded msgpack value; strings and binaries borrow from the input.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Nil,
    Bool(bool),
    /// The unsigned formats: positive fixint, uint 8/16/32/64.
    Uint(u64),
    /// The signed formats: negative fixint, int 8/16/32/64.
    Int(i64),
    F32(f32),
    F64(f64),
    Str(&'a str),
    Bin(&'a [u8]),
    Array(Vec<Value<'a>>),
    Map(Vec<(Value<'a>, Value<'a>)>),
    Ext(i8, &'a [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended inside a value.
    Truncated,
    /// 0xc1, the one byte the specification never uses.
    NeverUsed,
    /// A str whose bytes are not UTF-8 (the specification requires UTF-8).
    StrNotUtf8,
    /// Nesting deeper than any record has; refused rather than recursed into.
    TooDeep,
}

/// Records nest three levels (map, header list, pair); this leaves ample room.
const MAX_DEPTH: usize = 32;

/// Reads consecutive values from a byte slice.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    longer_than_needed: Option<usize>,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            pos: 0,
            longer_than_needed: None,
        }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// Where the first value read so far starts that a shorter msgpack form could have held
    /// (the filter's encoder promises the shortest form).
    pub fn longer_than_needed(&self) -> Option<usize> {
        self.longer_than_needed
    }

    /// Notes the value whose marker is at `at` as longer than needed unless its number (or
    /// length) is past `shorter_max`, the largest the next shorter form holds.
    fn shortest_unless(&mut self, at: usize, number: u64, shorter_max: u64) {
        if number <= shorter_max && self.longer_than_needed.is_none() {
            self.longer_than_needed = Some(at);
        }
    }

    /// The same for a negative number and the smallest the next shorter form holds.
    fn shortest_unless_below(&mut self, at: usize, number: i64, shorter_min: i64) {
        if number >= shorter_min && self.longer_than_needed.is_none() {
            self.longer_than_needed = Some(at);
        }
    }

    pub fn is_at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Reads the next whole value.
    pub fn value(&mut self) -> Result<Value<'a>, DecodeError> {
        self.value_at_depth(0)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(len).ok_or(DecodeError::Truncated)?;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn str(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Value::Str)
            .map_err(|_| DecodeError::StrNotUtf8)
    }

    fn bin(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        self.take(len).map(Value::Bin)
    }

    fn ext(&mut self, len: usize) -> Result<Value<'a>, DecodeError> {
        let kind = i8::from_be_bytes(self.array()?);
        self.take(len).map(|data| Value::Ext(kind, data))
    }

    fn seq(&mut self, len: usize, depth: usize) -> Result<Value<'a>, DecodeError> {
        // Every element takes at least one byte: a length the input cannot hold is truncated,
        // and checking that first keeps a lying length from allocating.
        if len > self.bytes.len().saturating_sub(self.pos) {
            return Err(DecodeError::Truncated);
        }
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            items.push(self.value_at_depth(depth + 1)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value<'a>, DecodeError> {
        if len.saturating_mul(2) > self.bytes.len().saturating_sub(self.pos) {
            return Err(DecodeError::Truncated);
        }
        let mut entries = Vec::with_capacity(len);
        for _ in 0..len {
            let key = self.value_at_depth(depth + 1)?;
            let value = self.value_at_depth(depth + 1)?;
            entries.push((key, value));
        }
        Ok(Value::Map(entries))
    }

    fn value_at_depth(&mut self, depth: usize) -> Result<Value<'a>, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let at = self.pos;
        let marker = self.u8()?;
        let small = usize::from(marker & 0x0f);
        let value = match marker {
            0x00..=0x7f => Value::Uint(u64::from(marker)),
            0x80..=0x8f => self.map(small, depth)?,
            0x90..=0x9f => self.seq(small, depth)?,
            0xa0..=0xbf => self.str(usize::from(marker & 0x1f))?,
            0xc0 => Value::Nil,
            0xc1 => return Err(DecodeError::NeverUsed),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let len = self.u8()?;
                self.bin(usize::from(len))?
            }
            0xc5 => {
                let len = self.u16()?;
                self.shortest_unless(at, u64::from(len), 0xff);
                self.bin(usize::from(len))?
            }
            0xc6 => {
                let len = self.u32()?;
                self.shortest_unless(at, u64::from(len), 0xffff);
                self.bin(len as usize)?
            }
            0xc7 => {
                let len = self.u8()?;
                self.ext(usize::from(len))?
            }
            0xc8 => {
                let len = self.u16()?;
                self.ext(usize::from(len))?
            }
            0xc9 => {
                let len = self.u32()?;
                self.ext(len as usize)?
            }
            0xca => Value::F32(f32::from_bits(self.u32()?)),
            0xcb => Value::F64(f64::from_bits(self.u64()?)),
            0xcc => {
                let number = u64::from(self.u8()?);
                self.shortest_unless(at, number, 0x7f);
                Value::Uint(number)
            }
            0xcd => {
                let number = u64::from(self.u16()?);
                self.shortest_unless(at, number, 0xff);
                Value::Uint(number)
            }
            0xce => {
                let number = u64::from(self.u32()?);
                self.shortest_unless(at, number, 0xffff);
                Value::Uint(number)
            }
            0xcf => {
                let number = self.u64()?;
                self.shortest_unless(at, number, 0xffff_ffff);
                Value::Uint(number)
            }
            0xd0 => {
                let number = i64::from(i8::from_be_bytes(self.array()?));
                self.shortest_unless_below(at, number, -32);
                Value::Int(number)
            }
            0xd1 => {
                let number = i64::from(i16::from_be_bytes(self.array()?));
                self.shortest_unless_below(at, number, i64::from(i8::MIN));
                Value::Int(number)
            }
            0xd2 => {
                let number = i64::from(i32::from_be_bytes(self.array()?));
                self.shortest_unless_below(at, number, i64::from(i16::MIN));
                Value::Int(number)
            }
            0xd3 => {
                let number = i64::from_be_bytes(self.array()?);
                self.shortest_unless_below(at, number, i64::from(i32::MIN));
                Value::Int(number)
            }
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let len = self.u8()?;
                self.shortest_unless(at, u64::from(len), 31);
                self.str(usize::from(len))?
            }
            0xda => {
                let len = self.u16()?;
                self.shortest_unless(at, u64::from(len), 0xff);
                self.str(usize::from(len))?
            }
            0xdb => {
                let len = self.u32()?;
                self.shortest_unless(at, u64::from(len), 0xffff);
                self.str(len as usize)?
            }
            0xdc => {
                let len = self.u16()?;
                self.shortest_unless(at, u64::from(len), 15);
                self.seq(usize::from(len), depth)?
            }
            0xdd => {
                let len = self.u32()?;
                self.shortest_unless(at, u64::from(len), 0xffff);
                self.seq(len as usize, depth)?
            }
            0xde => {
                let len = self.u16()?;
                self.shortest_unless(at, u64::from(len), 15);
                self.map(usize::from(len), depth)?
            }
            0xdf => {
                let len = self.u32()?;
                self.shortest_unless(at, u64::from(len), 0xffff);
                self.map(len as usize, depth)?
            }
            0xe0..=0xff => Value::Int(i64::from(marker as i8)),
        };
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Value<'_> {
        let mut reader = Reader::new(bytes);
        let value = reader.value().unwrap();
        assert!(reader.is_at_end(), "{bytes:x?} left bytes over");
        value
    }

    // Byte strings below are the examples of the msgpack specification's format tables.
    #[test]
    fn integers_in_every_width() {
        assert_eq!(one(&[0x7f]), Value::Uint(127));
        assert_eq!(one(&[0xcc, 0xff]), Value::Uint(255));
        assert_eq!(one(&[0xcd, 0x01, 0x00]), Value::Uint(256));
        assert_eq!(one(&[0xce, 0, 1, 0, 0]), Value::Uint(65536));
        assert_eq!(
            one(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Value::Uint(u64::MAX)
        );
        assert_eq!(one(&[0xff]), Value::Int(-1));
        assert_eq!(one(&[0xe0]), Value::Int(-32));
        assert_eq!(one(&[0xd0, 0x80]), Value::Int(-128));
        assert_eq!(one(&[0xd1, 0xff, 0x00]), Value::Int(-256));
        assert_eq!(one(&[0xd2, 0x80, 0, 0, 0]), Value::Int(i64::from(i32::MIN)));
        assert_eq!(
            one(&[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]),
            Value::Int(i64::MIN)
        );
    }

    #[test]
    fn strings_binaries_and_containers() {
        assert_eq!(one(&[0xa3, b'a', b'b', b'c']), Value::Str("abc"));
        assert_eq!(one(&[0xd9, 1, b'x']), Value::Str("x"));
        assert_eq!(one(&[0xda, 0, 1, b'x']), Value::Str("x"));
        assert_eq!(one(&[0xdb, 0, 0, 0, 1, b'x']), Value::Str("x"));
        assert_eq!(one(&[0xc4, 2, 0xff, 0xfe]), Value::Bin(&[0xff, 0xfe]));
        assert_eq!(one(&[0xc5, 0, 1, 7]), Value::Bin(&[7]));
        assert_eq!(one(&[0xc6, 0, 0, 0, 0]), Value::Bin(&[]));
        assert_eq!(
            one(&[0x92, 0xc0, 0xc3]),
            Value::Array(vec![Value::Nil, Value::Bool(true)])
        );
        assert_eq!(
            one(&[0xdc, 0, 1, 0xc2]),
            Value::Array(vec![Value::Bool(false)])
        );
        assert_eq!(
            one(&[0x81, 0xa1, b'k', 0x01]),
            Value::Map(vec![(Value::Str("k"), Value::Uint(1))])
        );
        assert_eq!(
            one(&[0xde, 0, 1, 0xa1, b'k', 0x01]),
            Value::Map(vec![(Value::Str("k"), Value::Uint(1))])
        );
        assert_eq!(one(&[0xd4, 1, 9]), Value::Ext(1, &[9]));
        assert_eq!(one(&[0xca, 0x3f, 0x80, 0, 0]), Value::F32(1.0));
    }

    fn longer_than_needed(bytes: &[u8]) -> Option<usize> {
        let mut reader = Reader::new(bytes);
        reader.value().unwrap();
        reader.longer_than_needed()
    }

    #[test]
    fn a_form_longer_than_needed_is_noticed() {
        assert_eq!(longer_than_needed(&[0xcc, 0x80]), None);
        assert_eq!(longer_than_needed(&[0xcc, 0x7f]), Some(0));
        assert_eq!(longer_than_needed(&[0xcd, 0x00, 0xff]), Some(0));
        assert_eq!(longer_than_needed(&[0xce, 0, 1, 0, 0]), None);
        assert_eq!(
            longer_than_needed(&[0xcf, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
            Some(0)
        );
        assert_eq!(longer_than_needed(&[0xd0, 0xe0]), Some(0));
        assert_eq!(longer_than_needed(&[0xd0, 0xdf]), None);
        assert_eq!(longer_than_needed(&[0xd9, 1, b'x']), Some(0));
        assert_eq!(longer_than_needed(&[0xc4, 0]), None);
        assert_eq!(longer_than_needed(&[0xc5, 0, 1, 7]), Some(0));
        assert_eq!(longer_than_needed(&[0x91, 0xdc, 0, 1, 0xc2]), Some(1));
        assert_eq!(longer_than_needed(&[0xde, 0, 0]), Some(0));
    }

    #[test]
    fn malformed_input_is_refused() {
        assert_eq!(Reader::new(&[]).value(), Err(DecodeError::Truncated));
        assert_eq!(
            Reader::new(&[0xa2, b'a']).value(),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).value(),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Reader::new(&[0xc1]).value(), Err(DecodeError::NeverUsed));
        assert_eq!(
            Reader::new(&[0xa1, 0xff]).value(),
            Err(DecodeError::StrNotUtf8)
        );
        assert_eq!(Reader::new(&[0x91; 40]).value(), Err(DecodeError::TooDeep));
    }
}
