//! A release's version: what may name a directory under `releases/` and an S3 key.

use std::fmt;

/// A release version: `^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`. Always safe as one path component.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("version is empty")]
    Empty,
    #[error("version {0:?} is longer than 128 characters")]
    TooLong(String),
    #[error("version {0:?} must start with a letter or digit")]
    BadStart(String),
    #[error("version {value:?} contains {found:?}; only letters, digits and . _ + - are allowed")]
    BadChar { value: String, found: char },
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        let first = s.chars().next().ok_or(VersionError::Empty)?;
        if s.len() > 128 {
            return Err(VersionError::TooLong(s.to_owned()));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(VersionError::BadStart(s.to_owned()));
        }
        if let Some(found) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
        {
            return Err(VersionError::BadChar {
                value: s.to_owned(),
                found,
            });
        }
        Ok(Version(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_syntax() {
        for ok in ["1", "1.4.2", "v2.0.0-rc.1+build.5", "A_b", &"x".repeat(128)] {
            assert_eq!(
                Version::parse(ok).map(|v| v.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Version::parse(""), Err(VersionError::Empty));
        assert!(matches!(
            Version::parse(&"x".repeat(129)),
            Err(VersionError::TooLong(_))
        ));
        for bad_start in [".", "..", "-1", "_a", "+a", "é"] {
            assert!(
                matches!(Version::parse(bad_start), Err(VersionError::BadStart(_))),
                "{bad_start}"
            );
        }
        for (bad, ch) in [("1/2", '/'), ("a b", ' '), ("1\n", '\n'), ("a\0", '\0')] {
            assert_eq!(
                Version::parse(bad),
                Err(VersionError::BadChar {
                    value: bad.into(),
                    found: ch
                })
            );
        }
    }
}
