//! The parameter's value as operators write it: a bare version (`1.4.2`) or a JSON object with
//! the version, its digest and a rollout (docs/FLEET.md).

use crate::digest::Sha256Digest;
use crate::rollout::{Rollout, RolloutError};
use crate::version::{Version, VersionError};

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
