//! How a deploy, a change of settings or a rollback ended, said once. Each such ending is one
//! [`Ending`]; [`Agent::finish`] records it in the state (in one save, with the switch in flight
//! cleared), then journals it as the event its result names (and sends the notice, for the
//! endings an operator is told about), and gives the pass its [`Outcome`]. The three can no
//! longer drift apart: they are all read off the same `result`.

use super::{Agent, Outcome, Parts};
use crate::events::{emit, Event, Fields};
use crate::state::{self, Record, Request, State, Verdict};
use crate::version::Version;

pub(super) struct Ending<'a> {
    /// What the state's `last.result` will say; the event and the outcome follow from it.
    pub result: Verdict,
    pub version: &'a Version,
    pub request: Option<Request>,
    /// Why it went wrong: the state's `last.error`, and the event's `ERROR`.
    pub error: Option<String>,
    /// The journal message.
    pub message: String,
}

/// The journal event an ending is reported as.
fn event(result: Verdict) -> Event {
    match result {
        Verdict::Deployed => Event::Deployed,
        Verdict::Reverted | Verdict::EnvironmentReverted | Verdict::RolledBack => Event::Reverted,
        Verdict::RevertFailed | Verdict::Failed => Event::RevertFailed,
        Verdict::Rejected => Event::ArtifactRejected,
        Verdict::Aborted => Event::DeployAborted,
        Verdict::EnvironmentApplied => Event::EnvironmentApplied,
        Verdict::Invalid => Event::PollFailed,
    }
}

/// Whether an ending's event is also a notice to `[notify]`'s webhook.
fn is_notice(event: Event) -> bool {
    matches!(
        event,
        Event::Deployed
            | Event::Reverted
            | Event::RevertFailed
            | Event::DeployAborted
            | Event::EnvironmentApplied
    )
}

/// The pass's outcome for an ending. A reverted change of settings counts as a revert (the
/// fleet status says `reverted` too).
fn outcome(result: Verdict) -> Outcome {
    match result {
        Verdict::Deployed => Outcome::Deployed,
        Verdict::Reverted | Verdict::EnvironmentReverted | Verdict::RolledBack => Outcome::Reverted,
        Verdict::RevertFailed => Outcome::RevertFailed,
        Verdict::Failed => Outcome::Failed,
        Verdict::Rejected => Outcome::Rejected,
        Verdict::Aborted => Outcome::Aborted,
        Verdict::EnvironmentApplied => Outcome::EnvironmentApplied,
        Verdict::Invalid => Outcome::Invalid,
    }
}

impl<P: Parts> Agent<P> {
    /// Records, reports and returns how a deploy-like action ended (see the module's comment).
    /// The state comes first: the journal never says more than the state holds.
    pub(super) fn finish(
        &self,
        state: &mut State,
        ending: Ending<'_>,
        fields: &Fields<'_>,
    ) -> Outcome {
        let Ending {
            result,
            version,
            request,
            error,
            message,
        } = ending;
        state.finish(Record {
            result,
            version: Some(version.to_string()),
            request,
            error: error.clone(),
            at: state::now(),
        });
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot save state");
        }
        if let Some(last) = &state.last {
            self.record_history(last);
        }
        let fields = match &error {
            Some(error) => fields.with_error(error),
            None => *fields,
        };
        let event = event(result);
        match is_notice(event) {
            true => self.announce(event, &fields, &message),
            false => emit(event, &fields, &message),
        }
        outcome(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every result an ending can record has its event and outcome, and the ones that are bad
    /// news for a request are the fleet's failures.
    #[test]
    fn results_events_and_outcomes_agree() {
        use crate::fleet::Status;
        for result in [
            Verdict::Deployed,
            Verdict::Reverted,
            Verdict::RevertFailed,
            Verdict::Failed,
            Verdict::Rejected,
            Verdict::Invalid,
            Verdict::RolledBack,
            Verdict::Aborted,
            Verdict::EnvironmentApplied,
            Verdict::EnvironmentReverted,
        ] {
            let outcome = outcome(result);
            let failed = outcome.status().is_some_and(Status::is_failure);
            assert_eq!(
                failed,
                matches!(
                    result,
                    Verdict::Reverted
                        | Verdict::RevertFailed
                        | Verdict::Failed
                        | Verdict::Rejected
                        | Verdict::Aborted
                        | Verdict::EnvironmentReverted
                        | Verdict::RolledBack
                ),
                "{result:?}"
            );
            assert_eq!(outcome.is_success(), !failed && result != Verdict::Invalid);
            assert_eq!(
                is_notice(event(result)),
                !matches!(result, Verdict::Rejected | Verdict::Invalid),
                "{result:?}"
            );
        }
    }
}
