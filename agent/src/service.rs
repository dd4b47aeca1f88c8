//! The app's systemd units, as the reconcile loop sees them, and the transient scopes a release's
//! hooks run in.

use std::future::Future;

#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    #[error("unit {unit}: {job} job finished with result {result:?}")]
    JobFailed {
        unit: String,
        job: &'static str,
        result: String,
    },
    #[error("unit {unit}: {job} job did not finish within {seconds} s")]
    JobTimeout {
        unit: String,
        job: &'static str,
        seconds: u64,
    },
    #[error("unit {unit}: {message}")]
    Bus { unit: String, message: String },
    #[error("system bus unreachable: {0}")]
    Unreachable(String),
}

/// The service manager also holds each hook's processes together ([`Confinement`]).
pub trait ServiceManager: Confinement {
    /// `RestartUnit(unit, "replace")`, returning once the job is removed with result `done`.
    fn restart(&self, unit: &str) -> impl Future<Output = Result<(), UnitError>>;
    /// Whether the unit's `ActiveState` is `failed`.
    fn is_failed(&self, unit: &str) -> impl Future<Output = Result<bool, UnitError>>;
}

/// Transient scopes, as `systemd-run --scope` makes them: a hook's processes stay in its scope
/// whatever they do to leave its process group (`setsid`, a double fork), and systemd, not
/// drover, kills them, so no capability to signal another user's processes is needed.
pub trait Confinement {
    /// Starts the scope `scope` with `pid` as its one process, returning once the start job is
    /// done. [`UnitError::Unreachable`]: there is no systemd to ask.
    fn confine(
        &self,
        scope: &str,
        description: &str,
        pid: u32,
    ) -> impl Future<Output = Result<(), UnitError>>;
    /// SIGKILL to every process in `scope`, returning once the scope is gone.
    fn kill_all(&self, scope: &str) -> impl Future<Output = Result<(), UnitError>>;
    /// The scopes loaded now whose names match `pattern` (a shell glob, as
    /// `ListUnitsByPatterns` takes): hooks an earlier drover left running when it was killed.
    fn scopes(&self, pattern: &str) -> impl Future<Output = Result<Vec<String>, UnitError>> {
        let _ = pattern;
        async { Ok(Vec::new()) }
    }
}
