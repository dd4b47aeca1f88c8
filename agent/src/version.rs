//! The desired version as operators write it into the parameter: a bare version or a JSON object.

use std::fmt;

use crate::digest::Sha256Digest;
use crate::rollout::{Rollout, RolloutError};

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

/// What the parameter asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    pub version: Version,
    /// The tarball's digest, when the value carries one; otherwise it comes from `{key}.sha256`.
    pub sha256: Option<Sha256Digest>,
    /// A staged rollout: when each instance adopts the version (docs/FLEET.md).
    pub rollout: Option<Rollout>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValueError {
    #[error("parameter value is empty")]
    Empty,
    #[error("parameter value is not valid JSON: {0}")]
    Json(String),
    #[error("parameter value is JSON but not an object")]
    NotObject,
    #[error("parameter value has no string field \"version\"")]
    NoVersion,
    #[error("parameter value field \"sha256\": {0}")]
    BadSha256(String),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("parameter value field {0}")]
    Rollout(#[from] RolloutError),
}

/// Parses a parameter value: `1.4.2`, or `{"version": "1.4.2", "sha256": "…", …}`.
/// Unknown JSON fields are ignored, so that new settings do not break older agents; a `rollout`
/// must be valid (see [`crate::rollout`]).
pub fn parse_value(value: &str) -> Result<Desired, ValueError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(ValueError::Empty);
    }
    if !value.starts_with('{') {
        return Ok(Desired {
            version: Version::parse(value)?,
            sha256: None,
            rollout: None,
        });
    }
    let json: serde_json::Value =
        serde_json::from_str(value).map_err(|e| ValueError::Json(e.to_string()))?;
    let object = json.as_object().ok_or(ValueError::NotObject)?;
    let version = object
        .get("version")
        .and_then(|v| v.as_str())
        .ok_or(ValueError::NoVersion)?;
    let sha256 = match object.get("sha256") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(
            s.parse::<Sha256Digest>()
                .map_err(|e| ValueError::BadSha256(e.to_string()))?,
        ),
        Some(_) => return Err(ValueError::BadSha256("not a string".into())),
    };
    let rollout = match object.get("rollout") {
        None | Some(serde_json::Value::Null) => None,
        Some(r) => Some(crate::rollout::parse(r)?),
    };
    Ok(Desired {
        version: Version::parse(version)?,
        sha256,
        rollout,
    })
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

    #[test]
    fn bare_value_is_trimmed() {
        let d = parse_value(" 1.4.2\n").unwrap();
        assert_eq!(d.version.as_str(), "1.4.2");
        assert_eq!(d.sha256, None);
    }

    #[test]
    fn json_value_with_digest_and_extra_fields() {
        let hex = "ab".repeat(32);
        let d = parse_value(&format!(
            r#"{{"version":"2.0","sha256":"{hex}","notes":{{}},"rollout":{{"duration":"1m"}}}}"#
        ))
        .unwrap();
        assert_eq!(d.version.as_str(), "2.0");
        assert_eq!(d.sha256.unwrap().to_string(), hex);
        assert!(d.rollout.is_some());
    }

    #[test]
    fn json_errors_say_what_is_wrong() {
        assert_eq!(parse_value(""), Err(ValueError::Empty));
        assert!(matches!(parse_value("{"), Err(ValueError::Json(_))));
        assert_eq!(parse_value(r#"{"v":"1"}"#), Err(ValueError::NoVersion));
        assert_eq!(parse_value(r#"{"version":1}"#), Err(ValueError::NoVersion));
        assert!(matches!(
            parse_value(r#"{"version":"1","sha256":"zz"}"#),
            Err(ValueError::BadSha256(_))
        ));
        assert!(matches!(
            parse_value(r#"{"version":"../x"}"#),
            Err(ValueError::Version(_))
        ));
        assert!(matches!(parse_value("1 2"), Err(ValueError::Version(_))));
        assert_eq!(
            parse_value(r#"{"version":"1","rollout":{}}"#)
                .unwrap_err()
                .to_string(),
            "parameter value field \"rollout\" needs \"duration\" or \"waves\""
        );
    }
}
