//! Where the desired version comes from: one parameter read per poll.

use std::future::Future;

/// The parameter as read: its value and its `Version` number, which identifies the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parameter {
    pub value: String,
    pub version: i64,
    /// When the value was put (`LastModifiedDate`): where a rollout without a `start` begins.
    pub modified: Option<std::time::SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// `region` says where it was looked for: the same name in another region is another
    /// parameter.
    #[error("parameter {name} not found in {region}")]
    NotFound { name: String, region: String },
    /// `verb`: "reading" or "writing".
    #[error("{verb} parameter {name} was throttled: {message}")]
    Throttled {
        name: String,
        verb: &'static str,
        message: String,
    },
    /// `action` is the IAM action refused (`ssm:PutParameter`).
    #[error("access denied: {action} on parameter {name}: {message}")]
    Denied {
        name: String,
        action: &'static str,
        message: String,
    },
    #[error("{verb} parameter {name}: {reach}")]
    Reach {
        name: String,
        verb: &'static str,
        reach: crate::reach::Reach,
    },
    #[error("{verb} parameter {name} failed: {message}")]
    Failed {
        name: String,
        verb: &'static str,
        message: String,
    },
}

impl crate::reach::Fix for SourceError {
    fn fix(&self) -> Option<String> {
        match self {
            SourceError::NotFound { .. } => Some(
                "`drover promote VERSION` creates it; check [source] parameter (--parameter) and \
                 [aws] region (--region)"
                    .into(),
            ),
            SourceError::Denied { name, action, .. } => Some(format!(
                "allow {action} on the parameter {name} to the role or user drover runs as \
                 (docs/IAM.md)"
            )),
            SourceError::Reach { reach, .. } => Some(reach.fix()),
            SourceError::Throttled { .. } | SourceError::Failed { .. } => None,
        }
    }
}

pub trait DesiredSource {
    fn read(&self) -> impl Future<Output = Result<Parameter, SourceError>>;

    /// The parameters directly under `path`, decrypted (`[environment]`). A source without any
    /// has none.
    fn read_path(
        &self,
        _path: &str,
    ) -> impl Future<Output = Result<Vec<crate::environment::PathParameter>, SourceError>> {
        std::future::ready(Ok(Vec::new()))
    }
}
