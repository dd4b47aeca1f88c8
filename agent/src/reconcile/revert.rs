//! Going back: the revert of a deploy that failed its health gate (7, the other way),
//! `drover rollback`, and the recovery of a switch an earlier run left in flight.

use super::ending::Ending;
use super::{lock_state, Agent, Error, Outcome, Parts};
use crate::events::{emit, Event, Fields};
use crate::failpoint;
use crate::state::{Pending, Request, State, Verdict};
use crate::version::Version;

impl<P: Parts> Agent<P> {
    /// The one way back, for a revert, a rollback and a recovery: `current` to `target` (a
    /// release on disk), then `switched` in the journal with `why`.
    fn switch_back(
        &self,
        target: &str,
        fields: &Fields<'_>,
        why: &str,
    ) -> Result<(), crate::fsutil::PathError> {
        self.layout.switch(target)?;
        emit(Event::Switched, fields, why);
        Ok(())
    }

    /// Returns to the last good release after a deploy was interrupted. The units are restarted
    /// whichever way `current` points now: they may be running the interrupted version's code
    /// (a crash after the switch back but before the restart leaves exactly that).
    pub(super) async fn recover(&mut self, state: &mut State, pending: &Pending) {
        let environment_back = state.environment_pending && self.put_back_environment(state);
        // Without a good release on disk (a first deploy), nothing to go back to: the next pass
        // tries again; only a restored environment file needs the units restarted.
        let Some(good) = state.good.clone().filter(|g| self.layout.has_release(g)) else {
            if environment_back {
                let _ = self.restart_units(&Fields::default()).await;
            }
            return;
        };
        // About the release returned to, and the deploy that was interrupted.
        let fields = Fields {
            version: Some(&good),
            previous_version: Some(&pending.version),
            parameter_version: pending.request.as_ref().map(|r| r.parameter_version),
            ..Fields::default()
        };
        if self.layout.active().ok().flatten().as_deref() != Some(good.as_str()) {
            let why = format!(
                "Deploy of {} was interrupted; switched back to {good}",
                pending.version
            );
            if let Err(e) = self.switch_back(&good, &fields, &why) {
                tracing::error!(target: "drover", event = crate::events::Event::SwitchFailed.as_str(), error = %e, "cannot switch back after an interrupted deploy");
                return;
            }
        }
        // Best effort: the next pass checks health and retries the deploy.
        let _ = self.restart_units(&fields).await;
    }

    /// A new environment file was in place, not yet committed, when the agent stopped: the last
    /// good one goes back (the caller restarts the units for it, once) and the next pass tries
    /// again. Returns whether the file was put back.
    pub(super) fn put_back_environment(&self, state: &mut State) -> bool {
        state.environment_put_back();
        match self.restore_environment() {
            Ok(()) => {
                tracing::warn!(target: "drover", event = crate::events::Event::EnvironmentRestored.as_str(), "An environment change was interrupted; put the last good environment file back");
                true
            }
            Err(e) => {
                tracing::error!(target: "drover", event = crate::events::Event::EnvironmentFailed.as_str(), error = %e, "cannot put the last good environment file back");
                false
            }
        }
    }

    /// 7, the other way: back to the previous good release, restarted and checked again.
    pub(super) async fn revert(
        &mut self,
        state: &mut State,
        request: Request,
        version: &Version,
        previous: Option<&str>,
        error: Error,
    ) -> Outcome {
        let error = error.to_string();
        state.remember_failed(request.clone());
        // Saved before switching back, so that an agent killed during the revert does not try
        // the failed version once more after it restarts.
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot save state");
        }
        failpoint::hit("after_failed_saved");
        let fields = Fields {
            version: Some(version.as_str()),
            previous_version: previous,
            parameter_version: Some(request.parameter_version),
            ..Fields::default()
        };
        let Some(previous) = previous.filter(|p| self.layout.has_release(p)) else {
            let why =
                format!("{error}; no previous release to switch back to, {version} stays current");
            let ending = Ending {
                result: Verdict::Failed,
                version,
                request: Some(request),
                error: Some(why),
                message: format!("Deploy of {version} failed and there is nothing to go back to"),
            };
            return self.finish(state, ending, &fields);
        };
        // The steps of the way back are about the release returned to.
        let back = Fields {
            version: Some(previous),
            previous_version: Some(version.as_str()),
            ..fields
        };
        let why = format!("Switched current back to {previous}");
        if let Err(e) = self.switch_back(previous, &back, &why) {
            let ending = Ending {
                result: Verdict::RevertFailed,
                version,
                request: Some(request),
                error: Some(format!("{error}; switching back failed: {e}")),
                message: format!("Could not switch back to {previous}"),
            };
            return self.finish(state, ending, &fields);
        }
        failpoint::hit("after_revert_switch");
        if state.environment_pending {
            if let Err(e) = self.restore_environment() {
                tracing::error!(target: "drover", event = crate::events::Event::EnvironmentFailed.as_str(), error = %e, "cannot put the last good environment file back");
            }
        }
        let ending = match self.activate(state, previous, &back).await {
            Ok(()) => Ending {
                result: Verdict::Reverted,
                version,
                request: Some(request),
                message: format!("Reverted to {previous}: {version} failed: {error}"),
                error: Some(error),
            },
            Err(e) => Ending {
                result: Verdict::RevertFailed,
                version,
                request: Some(request),
                error: Some(format!("{error}; {previous} is not healthy either: {e}")),
                message: format!("Reverted to {previous}, but it is not healthy either"),
            },
        };
        self.finish(state, ending, &fields)
    }

    /// `drover rollback`: back to the previous good release now, remembering the request that
    /// brought the current one as failed. Returns whether the previous release is healthy.
    pub async fn rollback(&mut self) -> Result<bool, Error> {
        self.begin_pass();
        let _lock = lock_state(&self.config.agent.state_dir)?;
        let mut state = self.prepare().await?;
        let target = state.previous.clone().ok_or(Error::NothingToRollBack)?;
        let rolled_back = match Version::parse(&target) {
            Ok(version) if self.layout.has_release(&target) => version,
            _ => return Err(Error::PreviousGone(target)),
        };
        let current = self.layout.active().ok().flatten();
        let current_version = current.as_deref().and_then(|c| Version::parse(c).ok());
        if let Some(applied) = state.applied.clone() {
            state.remember_failed(applied);
        }
        // The steps name the release they bring back, and the one it replaces; the `reverted`
        // at the end names, as an automatic revert's does, the release undone and where to.
        let steps = Fields {
            version: Some(&target),
            previous_version: current.as_deref(),
            ..Fields::default()
        };
        let fields = Fields {
            version: current.as_deref(),
            previous_version: Some(&target),
            ..Fields::default()
        };
        state.begin_switch(&target, None, false);
        self.save(&state)?;
        let why = format!("Switched current back to {target} (operator rollback)");
        self.switch_back(&target, &steps, &why)?;
        let healthy = self.activate(&mut state, &target, &steps).await;
        state.rolled_back(&target);
        let from = current_version.map(|v| v.to_string()).unwrap_or_default();
        let ending = match &healthy {
            Ok(()) => Ending {
                result: Verdict::RolledBack,
                version: &rolled_back,
                request: None,
                error: None,
                message: format!("Rolled back from {from} to {target} by operator"),
            },
            Err(e) => Ending {
                result: Verdict::RevertFailed,
                version: &rolled_back,
                request: None,
                error: Some(e.to_string()),
                message: format!("Rolled back to {target}, but it is not healthy"),
            },
        };
        self.finish(&mut state, ending, &fields);
        Ok(healthy.is_ok())
    }
}
