//! Answer bodies as they come off the wire. The device asks for zstd or gzip
//! (`accept-encoding`) and keeps a pull page compressed until the thread that
//! writes it decompresses it into the decoder a block at a time: a 10,000-row
//! page is about 5 MB of JSON and 600 kB of zstd, and the decoded JSON is
//! never held whole. Other answers are small and are decompressed whole,
//! up to [`MAX_DECODED_ANSWER`].

use std::io::{BufReader, Read};

use crate::error::{Error, Result};

/// What the device asks for: zstd first (the reference server's choice for a
/// tie), then gzip.
pub const ACCEPT_ENCODING: &str = "zstd, gzip";

/// The largest answer other than a pull page that the device decompresses
/// (a profile, a push result, a record list): a body that would grow past it
/// is refused as a protocol error instead of filling the memory.
pub const MAX_DECODED_ANSWER: u64 = 64 * 1024 * 1024;

/// How the decoder reads a compressed body: blocks of this size.
const READ_BLOCK: usize = 64 * 1024;

/// A body's `content-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Not compressed (no `content-encoding`, or `identity`).
    #[default]
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// The encoding a `content-encoding` header names. A transport that
    /// decompressed the body itself reports none. Anything the device did not
    /// ask for is a protocol error.
    pub fn from_header(value: Option<&str>) -> Result<Self> {
        let Some(value) = value.map(str::trim) else {
            return Ok(Self::Identity);
        };
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            Ok(Self::Identity)
        } else if value.eq_ignore_ascii_case("zstd") {
            Ok(Self::Zstd)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Ok(Self::Gzip)
        } else {
            Err(Error::Protocol(format!(
                "the server's answer is encoded as '{value}', which the device did not ask for"
            )))
        }
    }
}

/// An answer's body as received, with its encoding.
#[derive(Debug, Clone, Default)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub encoding: Encoding,
}

impl Body {
    /// A body that is not compressed.
    pub fn plain(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            encoding: Encoding::Identity,
        }
    }

    /// A reader of the decoded bytes, decompressing a block at a time.
    pub fn reader(&self) -> Result<BufReader<Decompressor<'_>>> {
        Ok(BufReader::with_capacity(READ_BLOCK, self.decompressor()?))
    }

    /// The decoded bytes as they are asked for, unbuffered: for a reader
    /// that keeps its own window (the page decoder).
    pub fn decompressor(&self) -> Result<Decompressor<'_>> {
        Ok(match self.encoding {
            Encoding::Identity => Decompressor::Identity(self.bytes.as_slice()),
            Encoding::Gzip => {
                Decompressor::Gzip(flate2::read::GzDecoder::new(self.bytes.as_slice()))
            }
            Encoding::Zstd => Decompressor::Zstd(
                zstd::stream::read::Decoder::with_buffer(self.bytes.as_slice())
                    .map_err(|e| Error::Protocol(format!("the server's answer: zstd: {e}")))?,
            ),
        })
    }

    /// The decoded bytes, whole, refused past [`MAX_DECODED_ANSWER`].
    pub fn decoded(self) -> Result<Vec<u8>> {
        if self.encoding == Encoding::Identity {
            return Ok(self.bytes);
        }
        let mut out = Vec::new();
        self.reader()?
            .take(MAX_DECODED_ANSWER + 1)
            .read_to_end(&mut out)
            .map_err(|e| {
                Error::Protocol(format!("the server's answer does not decompress: {e}"))
            })?;
        if out.len() as u64 > MAX_DECODED_ANSWER {
            return Err(Error::Protocol(format!(
                "the server's answer is larger than {MAX_DECODED_ANSWER} bytes once decompressed"
            )));
        }
        Ok(out)
    }
}

/// Decompresses a [`Body`] as it is read.
pub enum Decompressor<'a> {
    Identity(&'a [u8]),
    Gzip(flate2::read::GzDecoder<&'a [u8]>),
    Zstd(zstd::stream::read::Decoder<'static, &'a [u8]>),
}

impl Read for Decompressor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Self::Identity(r) => r.read(buf),
            Self::Gzip(r) => r.read(buf),
            Self::Zstd(r) => r.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).expect("gzip");
        e.finish().expect("gzip")
    }

    #[test]
    fn each_encoding_decodes_to_the_same_bytes() {
        let json = br#"{"a":[1,2,3],"b":"text"}"#.repeat(1000);
        for body in [
            Body::plain(json.clone()),
            Body {
                bytes: zstd::encode_all(json.as_slice(), 1).expect("zstd"),
                encoding: Encoding::Zstd,
            },
            Body {
                bytes: gzip(&json),
                encoding: Encoding::Gzip,
            },
        ] {
            let mut read = Vec::new();
            body.reader()
                .expect("reader")
                .read_to_end(&mut read)
                .expect("read");
            assert_eq!(read, json);
            assert_eq!(body.decoded().expect("decoded"), json);
        }
    }

    #[test]
    fn a_broken_or_unasked_encoding_is_a_protocol_error() {
        let mut bytes = zstd::encode_all(&b"{\"a\":1}".repeat(100)[..], 1).expect("zstd");
        bytes.truncate(bytes.len() / 2);
        let cut = Body {
            bytes,
            encoding: Encoding::Zstd,
        };
        assert!(matches!(cut.decoded(), Err(Error::Protocol(_))));
        let not_gzip = Body {
            bytes: b"{\"a\":1}".to_vec(),
            encoding: Encoding::Gzip,
        };
        assert!(matches!(not_gzip.decoded(), Err(Error::Protocol(_))));
        assert!(matches!(
            Encoding::from_header(Some("br")),
            Err(Error::Protocol(_))
        ));
        assert_eq!(
            Encoding::from_header(None).expect("none"),
            Encoding::Identity
        );
        assert_eq!(
            Encoding::from_header(Some("ZSTD")).expect("zstd"),
            Encoding::Zstd
        );
    }

    #[test]
    fn an_answer_past_the_limit_is_refused_once_decompressed() {
        // 65 MiB of zeros compress to a few kB.
        let zeros = std::io::repeat(0).take(MAX_DECODED_ANSWER + 1024 * 1024);
        let bomb = zstd::encode_all(zeros, 1).expect("zstd");
        assert!(bomb.len() < 64 * 1024);
        let body = Body {
            bytes: bomb,
            encoding: Encoding::Zstd,
        };
        match body.decoded() {
            Err(Error::Protocol(m)) => assert!(m.contains("larger than"), "{m}"),
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
}
