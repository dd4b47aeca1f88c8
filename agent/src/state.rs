//! What the agent remembers between runs, in `{state_dir}/state.json`.
//!
//! Changes are computed in memory and persisted in one atomic step ([`StateFile::save`]).
//! The `current` symlink is the truth about what is active; the state records what is known to be
//! good, what failed, and a switch that was in flight when the agent stopped.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, IoContext, PathError};

/// One deploy request: the parameter's value and its `Version` number. Putting the same value
/// again makes a new request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub value: String,
    pub parameter_version: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Result {
    /// The desired version runs and passed its health check.
    Deployed,
    /// The new version failed; the previous good one runs again and is healthy.
    Reverted,
    /// The new version failed and so did the switch back.
    RevertFailed,
    /// The new version failed and there was nothing to switch back to.
    Failed,
    /// The artifact was not accepted (digest, signature, unsafe or corrupt archive).
    Rejected,
    /// The parameter's value is not a valid request.
    Invalid,
    /// The operator rolled back with `drover rollback`.
    RolledBack,
    /// The new release's pre-activate hook failed; nothing was switched.
    Aborted,
    /// New settings under `[environment] path` passed the health gate.
    EnvironmentApplied,
    /// New settings under `[environment] path` failed the health gate; the last good ones are
    /// back.
    EnvironmentReverted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub result: Result,
    pub version: Option<String>,
    pub request: Option<Request>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// A switch that was started and not yet committed or reverted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub version: String,
    pub request: Option<Request>,
}

/// How many failed requests are remembered; older ones are forgotten first.
const FAILED_MEMORY: usize = 32;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The version last committed as healthy.
    pub good: Option<String>,
    /// The good version before `good`: where `drover rollback` goes.
    pub previous: Option<String>,
    /// The request that brought `good`.
    pub applied: Option<Request>,
    pub pending: Option<Pending>,
    pub last: Option<Outcome>,
    /// Requests that failed; not retried until the parameter changes.
    #[serde(default)]
    pub failed: Vec<Request>,
    /// `[environment]`: the variables of the last good environment file, as `NAME@version`
    /// (never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<String>>,
    /// The fingerprint of settings that failed the health gate; not tried again until they
    /// change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_failed: Option<String>,
    /// A new environment file is in place but not yet committed: a restart puts the last good
    /// one back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub environment_pending: bool,
}

impl State {
    pub fn has_failed(&self, request: &Request) -> bool {
        self.failed.contains(request)
    }

    /// How the last deploy ended, if it was one of `request`.
    pub fn last_of(&self, request: &Request) -> Option<&Outcome> {
        (self.last.as_ref()).filter(|last| last.request.as_ref() == Some(request))
    }

    pub fn remember_failed(&mut self, request: Request) {
        if !self.has_failed(&request) {
            self.failed.push(request);
        }
        let excess = self.failed.len().saturating_sub(FAILED_MEMORY);
        self.failed.drain(..excess);
    }

    /// Records `version` as the new good release, keeping the old good one as `previous`.
    pub fn commit(&mut self, version: &str, request: Option<Request>) {
        if self.good.as_deref() != Some(version) {
            self.previous = self.good.take();
            self.good = Some(version.to_owned());
        }
        self.applied = request;
        self.pending = None;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> std::result::Result<State, StateError> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).at("read", &self.path).map_err(StateError::from),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            }),
        }
    }

    pub fn save(&self, state: &State) -> std::result::Result<(), StateError> {
        let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes, 0o600)?;
        Ok(())
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: &str, n: i64) -> Request {
        Request {
            value: v.into(),
            parameter_version: n,
        }
    }

    #[test]
    fn commit_moves_good_to_previous() {
        let mut s = State::default();
        s.commit("1", Some(req("1", 1)));
        s.commit("2", Some(req("2", 2)));
        assert_eq!(
            (s.good.as_deref(), s.previous.as_deref()),
            (Some("2"), Some("1"))
        );
        // Committing the same version again (a re-put) keeps the previous one.
        s.commit("2", Some(req("2", 3)));
        assert_eq!(
            (s.good.as_deref(), s.previous.as_deref()),
            (Some("2"), Some("1"))
        );
        assert_eq!(s.applied, Some(req("2", 3)));
    }

    #[test]
    fn failed_requests_are_bounded_and_matched_exactly() {
        let mut s = State::default();
        for n in 0..40 {
            s.remember_failed(req("3", n));
        }
        assert_eq!(s.failed.len(), FAILED_MEMORY);
        assert!(s.has_failed(&req("3", 39)));
        assert!(!s.has_failed(&req("3", 0)), "oldest forgotten");
        assert!(!s.has_failed(&req("3", 40)), "a new put is a new request");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert_eq!(file.load().unwrap(), State::default());
        let mut s = State::default();
        s.commit("1.0", Some(req("1.0", 4)));
        s.remember_failed(req("2.0", 5));
        file.save(&s).unwrap();
        assert_eq!(file.load().unwrap(), s);
    }

    #[test]
    fn corrupt_state_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        std::fs::write(file.path(), b"{not json").unwrap();
        let err = file.load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
