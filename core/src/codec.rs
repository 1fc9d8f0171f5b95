//! Answer bodies as they come off the wire. The device asks for zstd or gzip
//! (`accept-encoding`) and keeps a pull page compressed until the thread that
//! writes it decompresses it into the decoder a block at a time: a page is
//! kept to about 256 kB on the wire (`download::PAGE_BYTES`; 10,000 work orders
//! are 190 kB of zstd), and the decoded JSON is never held whole. zstd
//! contexts are kept from one body to the next within a sync run
//! ([`ZSTD_CONTEXTS`]). Other answers are small and are decompressed whole,
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
            Encoding::Zstd => Decompressor::Zstd(ZstdReader::new(&self.bytes)),
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
    Zstd(ZstdReader<'a>),
}

/// The largest zstd window the device accepts (log2): 8 MiB, the limit of
/// the `zstd` content coding in HTTP (RFC 9659). A frame asking for more
/// is refused instead of making the device allocate it.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decompression contexts kept for the next body. A context holds its
/// window (up to 8 MiB, 512 kB for the reference server's pages) and keeps
/// it from one frame to the next: made per page, those buffers came and
/// went with every page, and glibc, which raises its threshold for mapping a
/// large block each time one is freed, kept them in its heaps in pieces (the
/// resident set grew with the number of pages, not with the size of one).
/// A few are kept: one per body being read at once (a page's head, two
/// tables' pages), none larger than [`ZSTD_CONTEXT_KEPT_BYTES`], and a
/// sync run frees them when it ends ([`release_zstd_contexts`]).
static ZSTD_CONTEXTS: std::sync::Mutex<Vec<zstd::zstd_safe::DCtx<'static>>> =
    std::sync::Mutex::new(Vec::new());

/// How many idle contexts [`ZSTD_CONTEXTS`] keeps.
const ZSTD_CONTEXTS_KEPT: usize = 4;

/// The largest context [`ZSTD_CONTEXTS`] keeps (its window included): one
/// that decoded a frame with a larger window, up to 8 MiB, is freed
/// instead of being held while the app is idle.
const ZSTD_CONTEXT_KEPT_BYTES: usize = 2 * 1024 * 1024;

/// Frees the kept zstd contexts: a sync run calls it when it ends, so an
/// idle app holds none (the contexts serve the pages of one run).
pub fn release_zstd_contexts() {
    ZSTD_CONTEXTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
}

/// Reads the decompressed bytes of one or more zstd frames held in memory,
/// with a context taken from [`ZSTD_CONTEXTS`] and given back when dropped.
pub struct ZstdReader<'a> {
    context: Option<zstd::zstd_safe::DCtx<'static>>,
    input: &'a [u8],
    /// Whether a frame is begun and not complete (zstd's last hint was not
    /// 0): input that ends here is cut short.
    in_frame: bool,
}

impl<'a> ZstdReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        let kept = ZSTD_CONTEXTS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let context = kept.unwrap_or_else(|| {
            let mut c = zstd::zstd_safe::DCtx::create();
            // Only fails for a parameter out of zstd's own bounds.
            let _ = c.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(
                ZSTD_WINDOW_LOG_MAX,
            ));
            c
        });
        Self {
            context: Some(context),
            input,
            in_frame: false,
        }
    }
}

impl Read for ZstdReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(context) = self.context.as_mut() else {
            return Ok(0);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.input.is_empty() && !self.in_frame {
                return Ok(0);
            }
            // With no input left, a begun frame may still hold output.
            let mut out = zstd::zstd_safe::OutBuffer::around(&mut *buf);
            let mut input = zstd::zstd_safe::InBuffer::around(self.input);
            let hint = context
                .decompress_stream(&mut out, &mut input)
                .map_err(zstd_error)?;
            let read = input.pos();
            self.input = &self.input[read..];
            self.in_frame = hint != 0;
            if out.pos() > 0 {
                return Ok(out.pos());
            }
            if read == 0 && self.in_frame {
                return Err(if self.input.is_empty() {
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "zstd: the frame is cut short",
                    )
                } else {
                    std::io::Error::other("zstd: the decoder made no progress")
                });
            }
        }
    }
}

impl Drop for ZstdReader<'_> {
    fn drop(&mut self) {
        let Some(mut context) = self.context.take() else {
            return;
        };
        if context
            .reset(zstd::zstd_safe::ResetDirective::SessionOnly)
            .is_err()
        {
            return;
        }
        if !worth_keeping(&context) {
            return;
        }
        let mut kept = ZSTD_CONTEXTS.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < ZSTD_CONTEXTS_KEPT {
            kept.push(context);
        }
    }
}

/// Whether a context is small enough to keep for the next body.
fn worth_keeping(context: &zstd::zstd_safe::DCtx<'_>) -> bool {
    context.sizeof() <= ZSTD_CONTEXT_KEPT_BYTES
}

fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("zstd: {}", zstd::zstd_safe::get_error_name(code)),
    )
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

    fn zstd_body(bytes: Vec<u8>) -> Body {
        Body {
            bytes,
            encoding: Encoding::Zstd,
        }
    }

    #[test]
    fn zstd_contexts_are_reused_clean_and_frames_follow_one_another() {
        let a = br#"{"a":[1,2,3]}"#.repeat(20_000);
        let b = br#"{"b":"text"}"#.repeat(30_000);
        // A body left half read gives its context back mid-frame; the next
        // body decoded with it starts clean.
        let first = zstd_body(zstd::encode_all(a.as_slice(), 1).expect("zstd"));
        let mut half = vec![0; a.len() / 2];
        first
            .reader()
            .expect("reader")
            .read_exact(&mut half)
            .expect("half");
        assert_eq!(half, a[..a.len() / 2]);
        for _ in 0..3 {
            let second = zstd_body(zstd::encode_all(b.as_slice(), 1).expect("zstd"));
            assert_eq!(second.decoded().expect("decoded"), b);
        }
        assert!(ZSTD_CONTEXTS.lock().expect("pool").len() <= ZSTD_CONTEXTS_KEPT);
        // Two frames one after the other decode as their concatenation.
        let mut two = zstd::encode_all(a.as_slice(), 1).expect("zstd");
        two.extend(zstd::encode_all(b.as_slice(), 3).expect("zstd"));
        assert_eq!(zstd_body(two).decoded().expect("decoded"), [a, b].concat());
        // An empty body decodes to nothing.
        assert_eq!(zstd_body(Vec::new()).decoded().expect("empty"), b"");
    }

    #[test]
    fn a_zstd_frame_asking_for_a_window_over_8_mib_is_refused() {
        // 20 MiB of one repeated 12 MiB-apart pattern, compressed with a
        // 16 MiB window (log 24): a decoder that honoured it would allocate
        // 16 MiB.
        let block: Vec<u8> = (0..12 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let data = [block.as_slice(), &block[..8 * 1024 * 1024]].concat();
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
        encoder.window_log(24).expect("window");
        encoder.write_all(&data).expect("write");
        let wide = encoder.finish().expect("finish");
        match zstd_body(wide)
            .reader()
            .expect("reader")
            .read_to_end(&mut Vec::new())
        {
            Err(e) => assert!(e.to_string().contains("zstd"), "{e}"),
            Ok(n) => panic!("a 16 MiB window was accepted ({n} bytes)"),
        }
        // A frame within the limit decodes; its context, holding an 8 MiB
        // window, is not kept for the next body.
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 1).expect("encoder");
        encoder.window_log(23).expect("window");
        encoder.write_all(&data[..2 * 1024 * 1024]).expect("write");
        let fits = encoder.finish().expect("finish");
        let mut reader = ZstdReader::new(&fits);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).expect("decoded");
        assert_eq!(out, data[..2 * 1024 * 1024]);
        assert!(!worth_keeping(reader.context.as_ref().expect("context")));
        // A context that decoded a reference-sized page is kept.
        let page = zstd::encode_all(&data[..2 * 1024 * 1024], 1).expect("zstd");
        let mut reader = ZstdReader::new(&page);
        reader.read_to_end(&mut Vec::new()).expect("decoded");
        assert!(worth_keeping(reader.context.as_ref().expect("context")));
    }
}
