//! A file's bytes, raw or gzip-compressed (detected by content), read with checks.
//!
//! Format readers ask this for fixed-size header fields and then for a payload whose
//! length they computed from the header. The payload is only allocated once the
//! length has been checked against what the input can hold: exactly, for raw bytes;
//! by deflate's best possible compression ratio, for gzip. A gzip stream is then read
//! with a cap (the claimed length), so memory grows with the data actually present.

use std::io::{self, Read};

use flate2::bufread::GzDecoder;

use crate::error::{DataError, Offset, Result};

/// The two magic bytes that open every gzip stream (RFC 1952).
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Deflate's largest possible expansion: a 258-byte match coded in 2 bits.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// Whether `bytes` start like a gzip stream.
pub(crate) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// The offset `at` bytes into the content of `bytes`, in the right frame: the file's
/// own bytes, or the decompressed data if `bytes` are gzip.
pub(crate) fn content_offset(bytes: &[u8], at: u64) -> Offset {
    if is_gzip(bytes) {
        Offset::Decompressed(at)
    } else {
        Offset::File(at)
    }
}

/// A reader over one file's content.
pub(crate) struct Input<'a> {
    name: &'a str,
    source: Source<'a>,
    /// Bytes of content consumed so far.
    pos: u64,
}

enum Source<'a> {
    Raw(&'a [u8]),
    Gzip {
        // Boxed: the decoder's size depends on flate2's backend (large with zlib-rs,
        // which the workspace enables through the xtask's zip), the raw variant is a slice.
        decoder: Box<Members<'a>>,
        compressed_len: u64,
    },
}

/// The members of a gzip file, read as one stream as gunzip reads them: when a member
/// ends and what follows starts with gzip's magic bytes, the next member is read;
/// anything else after a member is left unread (the caller reports it as trailing).
struct Members<'a> {
    current: GzDecoder<&'a [u8]>,
}

impl<'a> Members<'a> {
    /// The compressed bytes not consumed yet.
    fn get_ref(&self) -> &&'a [u8] {
        self.current.get_ref()
    }
}

impl Read for Members<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            let rest: &[u8] = self.current.get_ref();
            if n > 0 || buf.is_empty() || !is_gzip(rest) {
                return Ok(n);
            }
            self.current = GzDecoder::new(rest);
        }
    }
}

impl<'a> Input<'a> {
    /// Wraps `bytes`, decompressing them if they are gzip (detected by content).
    pub(crate) fn new(name: &'a str, bytes: &'a [u8]) -> Self {
        let source = if is_gzip(bytes) {
            Source::Gzip {
                decoder: Box::new(Members {
                    current: GzDecoder::new(bytes),
                }),
                compressed_len: bytes.len() as u64,
            }
        } else {
            Source::Raw(bytes)
        };
        Input {
            name,
            source,
            pos: 0,
        }
    }

    /// The offset `at` bytes into the content, in the right frame.
    pub(crate) fn offset(&self, at: u64) -> Offset {
        match self.source {
            Source::Raw(_) => Offset::File(at),
            Source::Gzip { .. } => Offset::Decompressed(at),
        }
    }

    /// A malformed-input error at content offset `at`.
    pub(crate) fn error(
        &self,
        at: u64,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> DataError {
        DataError::malformed(self.name, self.offset(at), expected, found)
    }

    /// Reads exactly `N` bytes holding `what`.
    pub(crate) fn read_array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        let got = self.read_up_to(&mut buf)?;
        if got < N {
            let at = self.pos;
            return Err(self.error(
                at,
                format!("{what} ({N} bytes)"),
                format!("only {got} bytes before the end of the data"),
            ));
        }
        self.pos += N as u64;
        Ok(buf)
    }

    /// Reads a payload of `len` bytes described by `what`, checking first that the
    /// input can hold it.
    pub(crate) fn read_payload(&mut self, len: u64, what: &str) -> Result<Vec<u8>> {
        let start = self.pos;
        let payload = match &mut self.source {
            Source::Raw(rest) => {
                let available = rest.len() as u64;
                if available < len {
                    return Err(self.error(
                        start + available,
                        format!("{len} bytes of {what}"),
                        format!("only {available} bytes (the file is truncated)"),
                    ));
                }
                // `len <= rest.len()`, so the conversion and the split cannot fail.
                let (payload, tail) = rest.split_at(len as usize);
                *rest = tail;
                payload.to_vec()
            }
            Source::Gzip {
                decoder,
                compressed_len,
            } => {
                let bound = compressed_len.saturating_mul(MAX_DEFLATE_RATIO);
                if len > bound {
                    let found = format!(
                        "a gzip stream of {compressed_len} bytes, which cannot hold more than \
                         {bound} bytes (the header's sizes are wrong or the file is truncated)"
                    );
                    let expected = format!("{len} bytes of {what}");
                    return Err(DataError::malformed(
                        self.name,
                        Offset::Decompressed(start),
                        expected,
                        found,
                    ));
                }
                let mut payload = Vec::new();
                let result = decoder.by_ref().take(len).read_to_end(&mut payload);
                let got = payload.len() as u64;
                if let Err(e) = result {
                    let consumed = *compressed_len - decoder.get_ref().len() as u64;
                    return Err(gzip_error(self.name, consumed, start + got, &e));
                }
                if got < len {
                    return Err(self.error(
                        start + got,
                        format!("{len} bytes of {what}"),
                        format!(
                            "only {got} bytes before the gzip stream ends (the file is truncated)"
                        ),
                    ));
                }
                payload
            }
        };
        self.pos += len;
        Ok(payload)
    }

    /// Checks that nothing follows the content read so far; `what` names that content.
    pub(crate) fn finish(mut self, what: &str) -> Result<()> {
        let end = self.pos;
        match &mut self.source {
            Source::Raw(rest) => {
                let trailing = rest.len();
                if trailing > 0 {
                    return Err(self.error(
                        end,
                        format!("the end of the file after {what}"),
                        format!("{trailing} trailing bytes"),
                    ));
                }
            }
            Source::Gzip {
                decoder,
                compressed_len,
            } => {
                // Count what is left without storing it, up to a bound.
                const COUNT_LIMIT: u64 = 1 << 20;
                let counted = io::copy(&mut decoder.by_ref().take(COUNT_LIMIT), &mut io::sink());
                match counted {
                    Err(e) => {
                        let consumed = *compressed_len - decoder.get_ref().len() as u64;
                        return Err(gzip_error(self.name, consumed, end, &e));
                    }
                    Ok(0) => {}
                    Ok(n) => {
                        let amount = if n == COUNT_LIMIT {
                            format!("at least {n}")
                        } else {
                            n.to_string()
                        };
                        return Err(self.error(
                            end,
                            format!("the end of the decompressed data after {what}"),
                            format!("{amount} trailing bytes"),
                        ));
                    }
                }
                // The stream ended (its CRC checked); nothing may follow it in the file.
                let rest = decoder.get_ref().len() as u64;
                if rest > 0 {
                    return Err(DataError::malformed(
                        self.name,
                        Offset::File(*compressed_len - rest),
                        "the end of the file after the gzip stream",
                        format!("{rest} trailing bytes"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Reads until `buf` is full or the input ends; returns the bytes read.
    fn read_up_to(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            let read = match &mut self.source {
                Source::Raw(rest) => rest.read(&mut buf[filled..]),
                Source::Gzip { decoder, .. } => decoder.read(&mut buf[filled..]),
            };
            match read {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let consumed = match &self.source {
                        Source::Gzip {
                            decoder,
                            compressed_len,
                        } => *compressed_len - decoder.get_ref().len() as u64,
                        Source::Raw(_) => 0,
                    };
                    return Err(gzip_error(
                        self.name,
                        consumed,
                        self.pos + filled as u64,
                        &e,
                    ));
                }
            }
        }
        Ok(filled)
    }
}

/// The error for a corrupt gzip stream (bad header, bad deflate data, bad CRC, cut short).
fn gzip_error(name: &str, compressed_at: u64, decompressed_at: u64, e: &io::Error) -> DataError {
    DataError::malformed(
        name,
        Offset::File(compressed_at),
        "a valid gzip stream",
        format!("{e} (after {decompressed_at} decompressed bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::gzip;

    #[test]
    fn raw_payload_and_clean_end() {
        let bytes = [1, 2, 3, 4, 5];
        let mut input = Input::new("f", &bytes);
        assert_eq!(input.read_array::<2>("head").unwrap(), [1, 2]);
        assert_eq!(input.read_payload(3, "body").unwrap(), vec![3, 4, 5]);
        input.finish("body").unwrap();
    }

    #[test]
    fn raw_truncation_and_trailing_bytes_are_located() {
        let bytes = [1, 2, 3];
        let mut input = Input::new("f", &bytes);
        input.read_array::<1>("head").unwrap();
        let err = input.read_payload(5, "body").unwrap_err().to_string();
        assert!(
            err.contains("at byte 3") && err.contains("5 bytes of body"),
            "{err}"
        );

        let mut input = Input::new("f", &bytes);
        input.read_payload(1, "body").unwrap();
        let err = input.finish("body").unwrap_err().to_string();
        assert!(
            err.contains("at byte 1") && err.contains("2 trailing bytes"),
            "{err}"
        );
    }

    #[test]
    fn gzip_is_detected_and_decompressed() {
        let packed = gzip(&[9, 8, 7, 6]);
        let mut input = Input::new("f.gz", &packed);
        assert_eq!(input.read_array::<1>("head").unwrap(), [9]);
        assert_eq!(input.read_payload(3, "body").unwrap(), vec![8, 7, 6]);
        input.finish("body").unwrap();
    }

    #[test]
    fn gzip_trailing_content_and_trailing_file_bytes_are_errors() {
        let packed = gzip(&[1, 2, 3]);
        let mut input = Input::new("f.gz", &packed);
        input.read_payload(1, "body").unwrap();
        let err = input.finish("body").unwrap_err().to_string();
        assert!(
            err.contains("byte 1 of the decompressed data") && err.contains("2 trailing"),
            "{err}"
        );

        let mut padded = gzip(&[1]);
        let stream_len = padded.len();
        padded.extend_from_slice(&[0, 0]);
        let mut input = Input::new("f.gz", &padded);
        input.read_payload(1, "body").unwrap();
        let err = input.finish("body").unwrap_err().to_string();
        assert!(err.contains(&format!("at byte {stream_len}:")), "{err}");
    }

    #[test]
    fn impossible_gzip_claims_are_refused_before_allocating() {
        let packed = gzip(&[0; 16]);
        let mut input = Input::new("f.gz", &packed);
        let err = input
            .read_payload(1 << 40, "pixels")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold more than"), "{err}");
    }

    /// Concatenated gzip members are one stream (as gunzip reads them), not a
    /// truncated file.
    #[test]
    fn a_multi_member_gzip_reads_as_one_stream() {
        let mut packed = gzip(&[1, 2, 3]);
        packed.extend(gzip(&[4, 5]));
        let mut input = Input::new("f.gz", &packed);
        assert_eq!(input.read_payload(5, "body").unwrap(), vec![1, 2, 3, 4, 5]);
        input.finish("body").unwrap();
    }

    #[test]
    fn truncated_gzip_is_an_error_not_a_panic() {
        let packed = gzip(&[5; 1000]);
        let cut = &packed[..packed.len() - 4];
        let mut input = Input::new("f.gz", cut);
        let err = input
            .read_payload(1000, "body")
            .and_then(|_| input.finish("body"));
        assert!(err.is_err());
    }
}
