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
    #[error("parameter {name} not found")]
    NotFound { name: String },
    #[error("reading parameter {name} was throttled: {message}")]
    Throttled { name: String, message: String },
    #[error("access to parameter {name} denied: {message}")]
    Denied { name: String, message: String },
    #[error("reading parameter {name} failed: {message}")]
    Failed { name: String, message: String },
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
