//! How a pass ended ([`Outcome`]), and how passes are run ([`Mode`]).

use crate::fleet::Status;

/// How one reconcile ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The desired version was already active and good (and, for `once`, healthy).
    InSync,
    Deployed,
    Reverted,
    RevertFailed,
    /// The new version failed and there was no previous release to return to.
    Failed,
    Rejected,
    Invalid,
    Skipped,
    /// Active and good, but `once` found it unhealthy now.
    Unhealthy,
    /// The parameter or the artifact does not exist (yet): poll again at the normal pace.
    Waiting,
    /// A transient error (API, network, disk): nothing changed; try again after a backoff.
    Retry,
    /// SSM said slow down: nothing changed; the poll loop slows down.
    Throttled,
    /// The new release's pre-activate hook failed; nothing was switched.
    Aborted,
    /// The version was in sync; the app's new environment passed the health gate.
    EnvironmentApplied,
    /// A rollout is under way and this instance's turn has not come.
    AwaitingTurn,
    /// Enough of the fleet failed the request: this instance holds at what it runs.
    Halted,
    /// `[fleet] max_in_flight` instances are out of service already: this one waits for a slot.
    AwaitingSlot,
    /// `drover pause` holds the instance: nothing new is deployed or applied.
    Paused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::InSync => "in sync",
            Outcome::Deployed => "deployed",
            Outcome::Reverted => "reverted",
            Outcome::RevertFailed => "revert failed",
            Outcome::Failed => "failed",
            Outcome::Rejected => "artifact rejected",
            Outcome::Invalid => "invalid parameter value",
            Outcome::Skipped => "skipping a failed request",
            Outcome::Unhealthy => "unhealthy",
            Outcome::Waiting => "waiting for the parameter or artifact",
            Outcome::Retry => "retrying after an error",
            Outcome::Throttled => "throttled by the parameter store",
            Outcome::Aborted => "aborted by the pre-activate hook",
            Outcome::EnvironmentApplied => "applied a new environment",
            Outcome::AwaitingTurn => "waiting for this instance's turn in the rollout",
            Outcome::Halted => "rollout halted: too many instances failed the version",
            Outcome::AwaitingSlot => "waiting for a slot to leave service",
            Outcome::Paused => "paused (drover resume ends it)",
        }
    }

    /// What the outcome says in a status object; `None` for passes that say nothing new (a
    /// transient error, an artifact not there yet, an invalid value; a skipped request is named
    /// by the failure it skips).
    pub fn status(self) -> Option<Status> {
        Some(match self {
            Outcome::Deployed => Status::Deployed,
            Outcome::InSync | Outcome::EnvironmentApplied => Status::InSync,
            Outcome::Reverted => Status::Reverted,
            Outcome::Failed => Status::Failed,
            Outcome::RevertFailed => Status::RevertFailed,
            Outcome::Rejected => Status::Rejected,
            Outcome::Aborted => Status::Aborted,
            Outcome::Unhealthy => Status::Unhealthy,
            Outcome::AwaitingTurn | Outcome::AwaitingSlot => Status::Waiting,
            Outcome::Halted => Status::Halted,
            Outcome::Paused => Status::Paused,
            Outcome::Skipped
            | Outcome::Invalid
            | Outcome::Waiting
            | Outcome::Retry
            | Outcome::Throttled => return None,
        })
    }

    /// `drover once` exits 0 only for these.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::InSync | Outcome::Deployed | Outcome::EnvironmentApplied
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `drover run`: a request that is skipped or invalid is reported once, not every poll.
    Daemon,
    /// `drover once`: everything is reported, and an in-sync version is health-checked.
    Once,
}
