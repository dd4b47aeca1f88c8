//! What a pass tells [`crate::metrics`]: each read of the parameter and what it asked for, how a
//! deploy or a change of settings ended, and, once the pass is over, whether it ended well; then
//! the file is written.

use super::{Agent, Outcome, Parts};
use crate::metrics::{DeployResult, EnvironmentResult, Poll};
use crate::source::{Parameter, SourceError};
use crate::state::Request;
use crate::value::Desired;
use crate::version::Version;

/// How a read of the parameter went.
pub(super) fn poll(read: &Result<Parameter, SourceError>) -> Poll {
    match read {
        Ok(_) => Poll::Answered,
        Err(SourceError::Throttled { .. }) => Poll::Throttled,
        Err(_) => Poll::Failed,
    }
}

/// How a deploy ended, from the outcome of the pass that tried it; `None` for one that came to
/// no end (it waits, or is tried again).
fn deploy_result(outcome: Outcome) -> Option<DeployResult> {
    Some(match outcome {
        Outcome::Deployed => DeployResult::Deployed,
        Outcome::Reverted => DeployResult::Reverted,
        Outcome::RevertFailed => DeployResult::RevertFailed,
        Outcome::Failed => DeployResult::Failed,
        Outcome::Rejected => DeployResult::Rejected,
        Outcome::Aborted => DeployResult::Aborted,
        Outcome::InSync
        | Outcome::Invalid
        | Outcome::Skipped
        | Outcome::Unhealthy
        | Outcome::Waiting
        | Outcome::Retry
        | Outcome::Throttled
        | Outcome::EnvironmentApplied
        | Outcome::AwaitingTurn
        | Outcome::Halted
        | Outcome::AwaitingSlot
        | Outcome::Paused => return None,
    })
}

/// How a change of settings ended, from the outcome of a pass that tried no deploy: a revert
/// there can only be the settings'.
fn environment_result(outcome: Outcome) -> Option<EnvironmentResult> {
    match outcome {
        Outcome::EnvironmentApplied => Some(EnvironmentResult::Applied),
        Outcome::Reverted => Some(EnvironmentResult::Reverted),
        Outcome::RevertFailed => Some(EnvironmentResult::RevertFailed),
        _ => None,
    }
}

impl<P: Parts> Agent<P> {
    /// The parameter's value this pass: `desired` when it is a version.
    pub(super) fn observe_desired(&mut self, request: &Request, desired: Option<&Desired>) {
        let desired = desired.map(|d| (d.version.as_str(), request.parameter_version));
        self.metrics.desired(desired);
    }

    /// The end of a pass that read the parameter: a deploy (`tried`) or a change of settings
    /// that came to an end is counted, with the deploy's phases.
    pub(super) fn observe_ending(&mut self, outcome: Outcome, tried: bool, version: &Version) {
        match tried {
            true => {
                if let Some(result) = deploy_result(outcome) {
                    let at = std::time::SystemTime::now();
                    (self.metrics).deploy_ended(version.as_str(), result, &self.timings, at);
                }
            }
            false => {
                if let Some(result) = environment_result(outcome) {
                    self.metrics.environment_ended(result);
                }
            }
        }
        self.timings.close();
    }

    /// After each pass of the daemon, whichever way it went: `[metrics] textfile` written.
    pub(super) fn write_metrics(&mut self, outcome: Outcome) {
        if outcome.is_success() {
            self.metrics.succeeded(std::time::SystemTime::now());
        }
        let current = self.layout.active().ok().flatten();
        self.metrics.write(current.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each ending is counted once, as one kind: a deploy's endings only when a deploy was tried,
    /// a change of settings' only when none was.
    #[test]
    fn endings_are_deploys_or_changes_of_settings() {
        for (outcome, deploy, environment) in [
            (Outcome::Deployed, Some(DeployResult::Deployed), None),
            (
                Outcome::Reverted,
                Some(DeployResult::Reverted),
                Some(EnvironmentResult::Reverted),
            ),
            (
                Outcome::RevertFailed,
                Some(DeployResult::RevertFailed),
                Some(EnvironmentResult::RevertFailed),
            ),
            (Outcome::Failed, Some(DeployResult::Failed), None),
            (Outcome::Rejected, Some(DeployResult::Rejected), None),
            (Outcome::Aborted, Some(DeployResult::Aborted), None),
            (
                Outcome::EnvironmentApplied,
                None,
                Some(EnvironmentResult::Applied),
            ),
            (Outcome::Retry, None, None),
            (Outcome::Waiting, None, None),
            (Outcome::AwaitingSlot, None, None),
            (Outcome::InSync, None, None),
        ] {
            assert_eq!(deploy_result(outcome), deploy, "{outcome:?}");
            assert_eq!(environment_result(outcome), environment, "{outcome:?}");
        }
    }
}
