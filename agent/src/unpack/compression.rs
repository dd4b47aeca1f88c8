//! Which compression an artifact uses, told by its magic bytes rather than its key's name, so
//! that `.tar.gz` and `.tar.zst` both work under any key template; and the decoder for each.
//!
//! zstd is libzstd (the `zstd` crate), chosen by measurement (docs/PERFORMANCE.md, "zstd"): it
//! decompresses twice as fast as zlib-ng's gzip here, where the pure-Rust decoder was slower
//! than gzip. Its window is capped at [`ZSTD_WINDOW_LOG_MAX`] (8 MiB), what every standard level
//! (1 to 19) uses at most: a frame asking for more (`--long`, `--ultra`) is refused rather than
//! given up to 128 MiB of memory.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};

use super::error::UnpackError;

/// The largest zstd window accepted, as a power of two: 8 MiB.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The level `drover publish --format zstd` packs at (docs/PERFORMANCE.md, "zstd").
pub const ZSTD_LEVEL: i32 = 9;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Gzip,
    Zstd,
}

impl Format {
    /// The format whose magic bytes `head` starts with.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(&GZIP_MAGIC) {
            Some(Format::Gzip)
        } else if head.starts_with(&ZSTD_MAGIC) {
            Some(Format::Zstd)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Zstd => "zstd",
        }
    }
}

/// The decompressed stream of an artifact.
pub enum Decoder {
    Gzip(flate2::bufread::GzDecoder<BufReader<File>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<File>>),
}

impl Decoder {
    /// Opens the decoder `compressed`'s magic bytes call for; anything else is not an archive.
    pub fn new(mut compressed: BufReader<File>) -> Result<Decoder, UnpackError> {
        let head = compressed.fill_buf().map_err(UnpackError::Read)?;
        match Format::sniff(head) {
            Some(Format::Gzip) => Ok(Decoder::Gzip(flate2::bufread::GzDecoder::new(compressed))),
            Some(Format::Zstd) => {
                let mut decoder = zstd::stream::read::Decoder::with_buffer(compressed)
                    .map_err(UnpackError::Read)?;
                decoder
                    .window_log_max(ZSTD_WINDOW_LOG_MAX)
                    .map_err(UnpackError::Read)?;
                Ok(Decoder::Zstd(decoder))
            }
            None => Err(UnpackError::Corrupt(
                "neither gzip nor zstd (no magic bytes of either)".into(),
            )),
        }
    }

    pub fn format(&self) -> Format {
        match self {
            Decoder::Gzip(_) => Format::Gzip,
            Decoder::Zstd(_) => Format::Zstd,
        }
    }

    /// The compressed stream, where the decoder stopped: at the end of the gzip member, or of
    /// the last zstd frame.
    pub fn into_compressed(self) -> BufReader<File> {
        match self {
            Decoder::Gzip(d) => d.into_inner(),
            Decoder::Zstd(d) => d.finish(),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf).map_err(|e| match e.raw_os_error() {
                Some(_) => e,
                // libzstd's own words, and what they mean here when the window is the reason.
                None if e.to_string().contains("too much memory") => io::Error::other(format!(
                    "zstd: {e}: the frame's window is over the {} MiB allowed (zstd --long and \
                     --ultra make such frames)",
                    1 << (ZSTD_WINDOW_LOG_MAX - 20)
                )),
                None => io::Error::other(format!("zstd: {e}")),
            }),
        }
    }
}

/// A zstd stream of `writer` at [`ZSTD_LEVEL`], with a content checksum (as gzip has its CRC).
pub fn zstd_writer<W: io::Write>(
    writer: W,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut encoder = zstd::stream::write::Encoder::new(writer, ZSTD_LEVEL)?;
    encoder.include_checksum(true)?;
    Ok(encoder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_magic_bytes() {
        assert_eq!(Format::sniff(&[0x1f, 0x8b, 8, 0]), Some(Format::Gzip));
        assert_eq!(Format::sniff(&ZSTD_MAGIC), Some(Format::Zstd));
        assert_eq!(Format::sniff(b"ustar"), None);
        assert_eq!(Format::sniff(&[0x1f]), None);
        assert_eq!(Format::sniff(&[]), None);
    }
}
