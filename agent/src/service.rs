//! The app's systemd units, as the reconcile loop sees them.

use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("unit {unit}: restart job finished with result {result:?}")]
    JobFailed { unit: String, result: String },
    #[error("unit {unit}: restart job did not finish within {seconds} s")]
    JobTimeout { unit: String, seconds: u64 },
    #[error("unit {unit}: {message}")]
    Bus { unit: String, message: String },
    #[error("system bus unreachable: {0}")]
    Unreachable(String),
}

pub trait ServiceManager {
    /// `RestartUnit(unit, "replace")`, returning once the job is removed with result `done`.
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), UnitError>>;
    /// Whether the unit's `ActiveState` is `failed`.
    fn is_failed(&self, unit: &str) -> impl Future<Output = Result<bool, UnitError>>;
}
