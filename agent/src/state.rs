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
pub enum Verdict {
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
pub struct Record {
    pub result: Verdict,
    pub version: Option<String>,
    pub request: Option<Request>,
    pub error: Option<String>,
    /// Seconds since the Unix epoch. Kept a number in `state.json`, which an older drover (a
    /// package downgraded) must still read; `drover status` shows it as RFC 3339. Read either.
    #[serde(deserialize_with = "crate::rfc3339::epoch_seconds::deserialize")]
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
    pub(crate) good: Option<String>,
    /// The good version before `good`: where `drover rollback` goes.
    pub(crate) previous: Option<String>,
    /// The request that brought `good`.
    pub(crate) applied: Option<Request>,
    pub(crate) pending: Option<Pending>,
    pub(crate) last: Option<Record>,
    /// Requests that failed; not retried until the parameter changes.
    #[serde(default)]
    pub(crate) failed: Vec<Request>,
    /// `[environment]`: the variables of the last good environment file, as `NAME@version`
    /// (never values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) environment: Option<Vec<String>>,
    /// The fingerprint of settings that failed the health gate; not tried again until they
    /// change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) environment_failed: Option<String>,
    /// A new environment file is in place but not yet committed: a restart puts the last good
    /// one back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) environment_pending: bool,
    /// `[loadbalancer]`: the target groups the instance was taken out of and not yet put back
    /// into. Recorded before it leaves them, so that a restart of drover puts it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) out_of_service: Vec<String>,
    /// `[autoscaling]`: the target lifecycle state whose hook drover completed last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) lifecycle_completed: Option<String>,
}

impl State {
    pub fn has_failed(&self, request: &Request) -> bool {
        self.failed.contains(request)
    }

    /// How the last deploy ended, if it was one of `request`.
    pub fn last_of(&self, request: &Request) -> Option<&Record> {
        (self.last.as_ref()).filter(|last| last.request.as_ref() == Some(request))
    }

    pub fn remember_failed(&mut self, request: Request) {
        if !self.has_failed(&request) {
            self.failed.push(request);
        }
        let excess = self.failed.len().saturating_sub(FAILED_MEMORY);
        self.failed.drain(..excess);
    }

    // Transitions: every change the loop makes, by name. Each is computed in memory; the caller
    // saves once (`StateFile::save`), as Bottlerocket's signpost does.

    /// A switch to `version` is about to start (with a new environment file, or not): recorded
    /// first, so that a crash in the middle can be undone.
    pub fn begin_switch(&mut self, version: &str, request: Option<Request>, environment: bool) {
        self.pending = Some(Pending {
            version: version.to_owned(),
            request,
        });
        self.environment_pending = environment;
    }

    /// The switch an earlier run left in flight, to be undone; it is no longer in flight.
    pub fn take_pending(&mut self) -> Option<Pending> {
        self.pending.take()
    }

    /// The switch did not happen, and nothing of it is in place.
    pub fn abort_switch(&mut self) {
        self.pending = None;
        self.environment_pending = false;
    }

    /// The switch itself failed after a new environment file went in: that file stays pending,
    /// and the next pass puts the good one back.
    pub fn switch_failed(&mut self) {
        self.pending = None;
    }

    /// How a deploy, a change of settings or a rollback ended; nothing is in flight any more.
    pub fn finish(&mut self, last: Record) {
        self.abort_switch();
        self.last = Some(last);
    }

    /// The parameter's value is not a request.
    pub fn invalid(&mut self, request: Request, error: &str) {
        self.last = Some(Record {
            result: Verdict::Invalid,
            version: None,
            request: Some(request),
            error: Some(error.to_owned()),
            at: now(),
        });
    }

    /// The running version was put again: the request `drover rollback` would undo.
    pub fn reapplied(&mut self, request: Request) {
        self.applied = Some(request);
    }

    /// `drover rollback` went back to `target`: it is the good release now, with nothing before
    /// it and no request behind it.
    pub fn rolled_back(&mut self, target: &str) {
        self.good = Some(target.to_owned());
        self.previous = None;
        self.applied = None;
    }

    /// The lifecycle hook of the transition to `target` is completed.
    pub fn lifecycle_completed(&mut self, target: &str) {
        self.lifecycle_completed = Some(target.to_owned());
    }

    /// The instance is about to leave these target groups.
    pub fn leaving_service(&mut self, groups: &[String]) {
        for group in groups {
            if !self.out_of_service.contains(group) {
                self.out_of_service.push(group.clone());
            }
        }
    }

    /// The instance is back in every group it left, healthy there.
    pub fn back_in_service(&mut self) {
        self.out_of_service.clear();
    }

    /// A new environment file is in place, not yet through the health gate.
    pub fn environment_staged(&mut self) {
        self.environment_pending = true;
    }

    /// The environment file that was pending is gone back to the last good one.
    pub fn environment_put_back(&mut self) {
        self.environment_pending = false;
    }

    /// The new settings passed: `remembered` (names and versions) is what is good now.
    pub fn environment_committed(&mut self, remembered: Vec<String>) {
        self.environment = Some(remembered);
        self.environment_failed = None;
        self.environment_pending = false;
    }

    /// Settings with this fingerprint failed the health gate: not tried again until they change.
    pub fn environment_rejected(&mut self, fingerprint: String) {
        self.environment_failed = Some(fingerprint);
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
    /// The named transitions do what their names say, and only that.
    #[test]
    fn transitions() {
        let request = Request {
            value: "2.0".into(),
            parameter_version: 7,
        };
        let mut s = State::default();
        s.begin_switch("2.0", Some(request.clone()), true);
        assert_eq!(s.pending.as_ref().map(|p| p.version.as_str()), Some("2.0"));
        assert!(s.environment_pending);
        s.switch_failed();
        assert!(
            s.pending.is_none() && s.environment_pending,
            "the new file stays pending"
        );
        s.begin_switch("2.0", None, true);
        s.abort_switch();
        assert!(s.pending.is_none() && !s.environment_pending);
        s.begin_switch("2.0", Some(request.clone()), true);
        s.commit("2.0", Some(request.clone()));
        s.finish(Record {
            result: Verdict::Deployed,
            version: Some("2.0".into()),
            request: Some(request.clone()),
            error: None,
            at: 1,
        });
        assert!(s.pending.is_none() && !s.environment_pending);
        assert_eq!(
            s.last_of(&request).map(|l| l.result),
            Some(Verdict::Deployed)
        );
        s.commit("3.0", None);
        assert_eq!(
            (s.good.as_deref(), s.previous.as_deref()),
            (Some("3.0"), Some("2.0"))
        );
        s.rolled_back("2.0");
        assert_eq!(
            (s.good.as_deref(), s.previous.as_deref()),
            (Some("2.0"), None)
        );
        assert!(s.applied.is_none());
        s.environment_staged();
        s.environment_rejected("abc".into());
        s.environment_committed(vec!["A@1".into()]);
        assert!(!s.environment_pending && s.environment_failed.is_none());
    }

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
