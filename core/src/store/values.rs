//! Complete JSON values cut out of a byte stream, so each can be decoded
//! from a slice (serde_json's fast path) while the stream is read a block at
//! a time: a compressed pull page is decompressed into a small window, never
//! whole.
//!
//! [`ValueStream`] only finds where a value ends (strings, escapes, nesting);
//! whether the value is valid JSON is for the decoder of its slice to say. On
//! input that is not JSON it returns an error or a slice the decoder refuses;
//! it never loops or panics.

use std::io::{self, Read};

/// Bytes read from the source at a time.
const BLOCK: usize = 64 * 1024;

/// The largest single value cut out (a row, a field of the page head, the
/// list of removed keys): past it the page is refused rather than buffered.
pub(super) const MAX_VALUE: usize = 64 * 1024 * 1024;

pub(super) struct ValueStream<R> {
    src: R,
    buf: Vec<u8>,
    /// The first unread byte.
    pos: usize,
    /// The end of the bytes read.
    end: usize,
    eof: bool,
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl<R: Read> ValueStream<R> {
    pub(super) fn new(src: R) -> Self {
        Self {
            src,
            buf: Vec::new(),
            pos: 0,
            end: 0,
            eof: false,
        }
    }

    /// Reads more: moves the unread bytes to the front, makes room for a
    /// block, and reads once. False at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.buf.len() - self.end < BLOCK {
            if self.end > MAX_VALUE {
                return Err(invalid("a value of the page is too large"));
            }
            self.buf.resize(self.end + BLOCK, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next byte that is not white space, not consumed; `None` at the end
    /// of the input.
    pub(super) fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            while self.pos < self.end {
                let b = self.buf[self.pos];
                if !is_space(b) {
                    return Ok(Some(b));
                }
                self.pos += 1;
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Consumes `byte` (after white space), or says what came instead.
    pub(super) fn expect(&mut self, byte: u8) -> io::Result<()> {
        match self.peek()? {
            Some(b) if b == byte => {
                self.pos += 1;
                Ok(())
            }
            Some(b) => Err(invalid(&format!(
                "expected '{}', found '{}'",
                byte as char,
                b.escape_ascii()
            ))),
            None => Err(invalid(&format!(
                "expected '{}', found the end of the page",
                byte as char
            ))),
        }
    }

    /// Consumes the `open` bracket of an array or object; false when `close`
    /// follows at once (consumed too: the container is empty).
    pub(super) fn open(&mut self, open: u8, close: u8) -> io::Result<bool> {
        self.expect(open)?;
        if self.peek()? == Some(close) {
            self.expect(close)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// After an element of a container: consumes `,` and says another
    /// follows, or consumes `close` and says the container ended.
    pub(super) fn next(&mut self, close: u8) -> io::Result<bool> {
        if self.peek()? == Some(b',') {
            self.expect(b',')?;
            return Ok(true);
        }
        self.expect(close)?;
        Ok(false)
    }

    /// The bytes of the next value (after white space), consumed.
    pub(super) fn value(&mut self) -> io::Result<&[u8]> {
        let Some(first) = self.peek()? else {
            return Err(invalid("expected a value, found the end of the page"));
        };
        // The scan's state: nesting depth, inside a string, after a
        // backslash in a string. `i` counts from `pos`, which moves when the
        // window is refilled.
        let scalar = !matches!(first, b'"' | b'[' | b'{');
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let mut i = 0;
        let len = loop {
            let mut done = None;
            while self.pos + i < self.end {
                if in_string && !escaped {
                    // The body of a string: straight to its next quote or
                    // backslash.
                    let rest = &self.buf[self.pos + i..self.end];
                    match memchr::memchr2(b'"', b'\\', rest) {
                        None => {
                            i += rest.len();
                            break;
                        }
                        Some(k) => i += k,
                    }
                }
                let b = self.buf[self.pos + i];
                i += 1;
                if scalar {
                    if matches!(b, b',' | b']' | b'}') || is_space(b) {
                        done = Some(i - 1);
                        break;
                    }
                } else if in_string {
                    if escaped {
                        escaped = false;
                    } else if b == b'\\' {
                        escaped = true;
                    } else if b == b'"' {
                        in_string = false;
                        if depth == 0 {
                            done = Some(i);
                            break;
                        }
                    }
                } else {
                    match b {
                        b'"' => in_string = true,
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => {
                            // A closing bracket without an opening one is
                            // for the slice's decoder to refuse.
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                done = Some(i);
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            if let Some(len) = done {
                break len;
            }
            if !self.fill()? {
                if scalar {
                    // A number or literal may end the input.
                    break i;
                }
                return Err(invalid("the page ends inside a value"));
            }
        };
        let start = self.pos;
        self.pos += len;
        Ok(&self.buf[start..start + len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out `n` bytes at a time, to cut values at every
    /// place.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn values(input: &[u8], step: usize) -> io::Result<Vec<String>> {
        let mut s = ValueStream::new(Trickle(input, step));
        let mut out = Vec::new();
        let mut more = s.open(b'[', b']')?;
        while more {
            out.push(String::from_utf8_lossy(s.value()?).into_owned());
            more = s.next(b']')?;
        }
        assert_eq!(s.peek()?, None);
        Ok(out)
    }

    #[test]
    fn values_are_cut_where_they_end_whatever_the_reads() {
        let input = br#" [ 12, -3.5e2 ,"a \"q\" ] } \\", [1, [2, "]"], {"k": "}"}], {"a": {"b": []}}, true, null ,"" ] "#;
        let expected = [
            "12",
            "-3.5e2",
            r#""a \"q\" ] } \\""#,
            r#"[1, [2, "]"], {"k": "}"}]"#,
            r#"{"a": {"b": []}}"#,
            "true",
            "null",
            r#""""#,
        ];
        for step in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(
                values(input, step).expect("values"),
                expected,
                "step {step}"
            );
        }
    }

    #[test]
    fn a_value_larger_than_a_block_is_whole() {
        let long = "x".repeat(3 * BLOCK + 17);
        let input = format!(r#"["{long}", [1, "{long}"]]"#);
        let got = values(input.as_bytes(), 5000).expect("values");
        assert_eq!(got[0].len(), long.len() + 2);
        assert_eq!(got[1], format!(r#"[1, "{long}"]"#));
    }

    #[test]
    fn a_cut_or_broken_input_is_an_error_not_a_hang() {
        for bad in [
            &br#"[1, "abc"#[..],
            br#"[1, [2, 3"#,
            br#"[1 2]"#,
            br#"["a\"]"#,
            br#"["#,
            br#""#,
        ] {
            for step in [1, 4, 1 << 20] {
                assert!(
                    values(bad, step).is_err(),
                    "{}",
                    String::from_utf8_lossy(bad)
                );
            }
        }
        // Unbalanced closers come out as a slice the decoder refuses.
        let mut s = ValueStream::new(&b"]]"[..]);
        assert_eq!(s.value().expect("scalar"), b"");
    }
}
