//! SHA-256 digests: parsing the hex forms operators write, and hashing while bytes stream in.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("expected 64 hex digits, found {0} characters")]
    Length(usize),
    #[error("{0:?} is not a hex digit")]
    NotHex(char),
    #[error("digest file is empty")]
    Empty,
}

impl Sha256Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, DigestError> {
        if s.len() != 64 {
            return Err(DigestError::Length(s.chars().count()));
        }
        let mut out = [0u8; 32];
        let digits: Vec<u8> = s
            .chars()
            .map(|c| {
                c.to_digit(16)
                    .map(|d| d as u8)
                    .ok_or(DigestError::NotHex(c))
            })
            .collect::<Result<_, _>>()?;
        for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = pair[0] << 4 | pair[1];
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

/// Parses the first line of a `sha256sum` file: 64 hex digits, optionally followed by whitespace
/// and a file name (with or without sha256sum's `*` binary marker).
pub fn parse_sha256sum(text: &str) -> Result<Sha256Digest, DigestError> {
    let line = text.lines().next().map(str::trim).unwrap_or("");
    let hex = line.split_whitespace().next().ok_or(DigestError::Empty)?;
    hex.parse()
}

/// SHA-256 computed incrementally, as chunks arrive.
#[derive(Default, Clone)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hex_round_trip_and_case() {
        let d: Sha256Digest = EMPTY.to_uppercase().parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(Sha256Digest::of(b""), d);
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Hasher::default();
        h.update(b"hello ");
        h.update(b"world");
        assert_eq!(h.finish(), Sha256Digest::of(b"hello world"));
    }

    #[test]
    fn sha256sum_formats() {
        let want: Sha256Digest = EMPTY.parse().unwrap();
        for text in [
            EMPTY.to_string(),
            format!("{EMPTY}\n"),
            format!("{EMPTY}  1.4.2.tar.gz\n"),
            format!("{EMPTY} *1.4.2.tar.gz"),
            format!("  {EMPTY}\tfile\nsecond line ignored"),
        ] {
            assert_eq!(parse_sha256sum(&text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_digests_say_why() {
        assert_eq!(parse_sha256sum(""), Err(DigestError::Empty));
        assert_eq!(parse_sha256sum("abc"), Err(DigestError::Length(3)));
        let mut bad = EMPTY.to_string();
        bad.replace_range(10..11, "g");
        assert_eq!(bad.parse::<Sha256Digest>(), Err(DigestError::NotHex('g')));
        assert_eq!(
            format!("{}x", &EMPTY[..63]).parse::<Sha256Digest>(),
            Err(DigestError::NotHex('x'))
        );
    }
}
