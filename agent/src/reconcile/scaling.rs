//! A pass inside an Auto Scaling lifecycle hook (`[autoscaling]`, see [`crate::lifecycle`]):
//! [`Agent::pass`] is the daemon's and `drover once`'s entry point. Outside a hook it is a
//! [`Agent::reconcile`]. While a launch hook holds the instance, the pass runs with heartbeats
//! beside it (a first download may outlast the hook's timeout), and its outcome decides how the
//! hook ends. On the way to `Terminated` nothing is deployed any more: the running release's
//! `pre-stop` hook runs, the instance drains from its target groups, and the hook is completed.

use std::rc::Rc;
use std::time::Duration;

use super::{lock_state, Agent, Outcome, Parts};
use crate::events::{emit, Event, Fields};
use crate::hooks::Hook;
use crate::lifecycle::{self, Action, AutoScaling, LifecycleError, Transition};

/// What a pass learnt of the group and the hooks' heartbeat timeouts, kept for the next.
#[derive(Default)]
pub(super) struct Known {
    /// A launch hook holds the instance this pass: it is not in service, so it takes no lease.
    pub launching: bool,
    group: Option<String>,
    /// `(hook, how often to send a heartbeat)`.
    heartbeats: Vec<(String, Duration)>,
}

/// A lifecycle hook holding this instance now.
#[derive(Clone, Debug)]
pub(super) struct Held {
    /// The target lifecycle state, as IMDS says it.
    target: String,
    hook: String,
    group: String,
    instance: String,
    every: Duration,
}

/// Where the instance stands with Auto Scaling this pass.
enum Stage {
    /// No hook holds it: a plain pass.
    Free,
    /// A hook holds it on its way in (or into a warm pool).
    Launching(Held),
    /// On its way out: no more deploys; `Some` until its hook is completed.
    Terminating(Option<Held>),
}

impl<P: Parts> Agent<P> {
    /// One pass, inside the lifecycle hook that holds the instance if one does; then the
    /// metrics, if they are written.
    pub async fn pass(&mut self) -> Outcome {
        let outcome = self.staged_pass().await;
        self.write_metrics(outcome);
        outcome
    }

    async fn staged_pass(&mut self) -> Outcome {
        match self.stage().await {
            Stage::Free => self.reconcile().await,
            Stage::Launching(held) => {
                let scaling = self.scaling.clone();
                self.lifecycle.launching = true;
                let outcome = {
                    let pass = self.reconcile();
                    tokio::select! {
                        outcome = pass => outcome,
                        never = heartbeats(scaling, held.clone()) => match never {},
                    }
                };
                self.lifecycle.launching = false;
                self.end_launch(&held, outcome).await;
                outcome
            }
            Stage::Terminating(Some(held)) => {
                let scaling = self.scaling.clone();
                let terminate = self.terminate(&held);
                tokio::select! {
                    () = terminate => {}
                    never = heartbeats(scaling, held.clone()) => match never {},
                }
                Outcome::InSync
            }
            Stage::Terminating(None) => Outcome::InSync,
        }
    }

    async fn stage(&mut self) -> Stage {
        let (Some(scaling), Some(config)) = (self.scaling.clone(), self.config.autoscaling.clone())
        else {
            return Stage::Free;
        };
        let target = match scaling.target_state().await {
            Ok(Some(target)) => target,
            Ok(None) => return Stage::Free,
            Err(e) => {
                self.lifecycle_failed(None, &e.to_string());
                return Stage::Free;
            }
        };
        let Some(transition) = Transition::of(&target) else {
            return Stage::Free;
        };
        let hook = match &transition {
            Transition::Launch(_) => config.launch_hook,
            Transition::Terminate => config.terminate_hook,
        };
        let done = self
            .state_file
            .load()
            .ok()
            .and_then(|s| s.lifecycle_completed);
        let pending = match hook {
            Some(hook) if done.as_deref() != Some(target.as_str()) => {
                match self.held(&scaling, target, hook).await {
                    Ok(held) => Some(held),
                    Err(e) => {
                        self.lifecycle_failed(None, &e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        match (transition, pending) {
            (Transition::Terminate, held) => Stage::Terminating(held),
            (Transition::Launch(_), Some(held)) => Stage::Launching(held),
            (Transition::Launch(_), None) => Stage::Free,
        }
    }

    /// The hook `hook` holding the instance on its way to `target`: the group and the
    /// heartbeat pace, asked once.
    async fn held(
        &mut self,
        scaling: &P::Scaling,
        target: String,
        hook: String,
    ) -> Result<Held, LifecycleError> {
        let instance =
            (self.instance_id().await).map_err(|e| LifecycleError::Metadata(e.to_string()))?;
        let group = match self.lifecycle.group.clone() {
            Some(group) => group,
            None => {
                let group = scaling.group(&instance).await?;
                self.lifecycle.group = Some(group.clone());
                group
            }
        };
        let known = (self.lifecycle.heartbeats.iter()).find(|(h, _)| *h == hook);
        let every = match known {
            Some((_, every)) => *every,
            None => {
                let timeout = scaling.heartbeat_timeout(&group, &hook).await?;
                let every = lifecycle::heartbeat_every(timeout);
                self.lifecycle.heartbeats.push((hook.clone(), every));
                every
            }
        };
        Ok(Held {
            target,
            hook,
            group,
            instance,
            every,
        })
    }

    /// Ends a launch hook as the pass's outcome says, or leaves it holding (with heartbeats
    /// on the next pass) when the pass decided nothing yet.
    async fn end_launch(&mut self, held: &Held, outcome: Outcome) {
        let state = self.state_file.load().unwrap_or_default();
        let active = self.layout.active().ok().flatten();
        let good_running = active.is_some() && active == state.good;
        let Some(action) = launch_verdict(outcome, good_running) else {
            return;
        };
        self.complete(held, action).await;
    }

    /// Scale-in: the running release's `pre-stop`, out of the target groups, drained; then the
    /// hook is completed. The groups left are not recorded: the instance is not coming back.
    async fn terminate(&mut self, held: &Held) {
        let hook = held.hook.as_str();
        let active = self.layout.active().ok().flatten();
        let fields = Fields {
            version: active.as_deref(),
            lifecycle_hook: Some(hook),
            ..Fields::default()
        };
        if let Some(version) = active.as_deref() {
            // Reported, not acted on: the instance goes either way.
            let _ = self.run_hook(Hook::PreStop, version, &fields).await;
        }
        if let Err(e) = self.leave_for_good(&fields).await {
            self.lifecycle_failed(Some(hook), &e.to_string());
        }
        self.complete(held, Action::Continue).await;
    }

    /// `CompleteLifecycleAction`, remembered in the state once it is done (or Auto Scaling has
    /// no action to complete any more: the hook timed out, or someone completed it).
    async fn complete(&mut self, held: &Held, action: Action) {
        let Some(scaling) = self.scaling.clone() else {
            return;
        };
        let hook = held.hook.as_str();
        let done = match scaling
            .complete(&held.group, hook, &held.instance, action)
            .await
        {
            Ok(()) => {
                emit(
                    Event::LifecycleCompleted,
                    &Fields {
                        lifecycle_hook: Some(hook),
                        result: Some(action.as_str()),
                        ..Fields::default()
                    },
                    &format!(
                        "Completed the lifecycle hook {hook} of {} with {} (to {})",
                        held.group,
                        action.as_str(),
                        held.target
                    ),
                );
                true
            }
            // The hook timed out, someone else completed it, or the instance was never held
            // (drover started on an instance long in service): nothing to complete.
            Err(e) if e.to_string().contains("No active Lifecycle Action") => {
                tracing::info!(target: "drover", event = crate::events::Event::LifecycleFailed.as_str(), hook = %hook, error = %e, "no lifecycle action to complete");
                true
            }
            Err(e) => {
                self.lifecycle_failed(Some(hook), &e.to_string());
                false
            }
        };
        if done {
            self.remember_completed(&held.target);
        }
    }

    fn remember_completed(&self, target: &str) {
        let Ok(_lock) = lock_state(&self.config.agent.state_dir) else {
            return;
        };
        let mut state = self.state_file.load().unwrap_or_default();
        state.lifecycle_completed(target);
        if let Err(e) = self.save(&state) {
            tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot save state");
        }
    }

    fn lifecycle_failed(&self, hook: Option<&str>, error: &str) {
        emit(
            Event::LifecycleFailed,
            &Fields {
                lifecycle_hook: hook,
                error: Some(error),
                ..Fields::default()
            },
            &format!("Auto Scaling lifecycle: {error}"),
        );
    }
}

/// How a launch hook ends after a pass that ended with `outcome`, `good_running` telling
/// whether a release that passed the health gate is what runs now; `None`: not yet (the pass
/// waits for its turn, a retry, an operator's fix), and the hook keeps holding, with
/// heartbeats.
fn launch_verdict(outcome: Outcome, good_running: bool) -> Option<Action> {
    match outcome {
        Outcome::Deployed | Outcome::InSync | Outcome::EnvironmentApplied => Some(Action::Continue),
        // Back on the previous release, healthy again.
        Outcome::Reverted => Some(Action::Continue),
        Outcome::RevertFailed | Outcome::Failed | Outcome::Unhealthy => Some(Action::Abandon),
        // Nothing was switched: what runs (if anything) is what ran before.
        Outcome::Rejected | Outcome::Aborted | Outcome::Skipped => Some(match good_running {
            true => Action::Continue,
            false => Action::Abandon,
        }),
        Outcome::Waiting
        | Outcome::AwaitingTurn
        | Outcome::AwaitingSlot
        | Outcome::Halted
        | Outcome::Paused
        | Outcome::Retry
        | Outcome::Throttled
        | Outcome::Invalid => None,
    }
}

/// `RecordLifecycleActionHeartbeat` for `held` every so often, for as long as it is polled.
async fn heartbeats<S: AutoScaling>(
    scaling: Option<Rc<S>>,
    held: Held,
) -> std::convert::Infallible {
    loop {
        tokio::time::sleep(held.every).await;
        let Some(scaling) = &scaling else { continue };
        match scaling
            .heartbeat(&held.group, &held.hook, &held.instance)
            .await
        {
            Ok(()) => {
                tracing::info!(target: "drover", event = crate::events::Event::LifecycleHeartbeat.as_str(), hook = %held.hook, "sent a lifecycle heartbeat")
            }
            Err(e) => {
                tracing::warn!(target: "drover", event = crate::events::Event::LifecycleFailed.as_str(), error = %e, "cannot send a lifecycle heartbeat")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_launch_continues_with_a_healthy_release_and_is_abandoned_without_one() {
        assert_eq!(
            launch_verdict(Outcome::Deployed, true),
            Some(Action::Continue)
        );
        assert_eq!(
            launch_verdict(Outcome::Reverted, true),
            Some(Action::Continue)
        );
        assert_eq!(
            launch_verdict(Outcome::Failed, false),
            Some(Action::Abandon)
        );
        assert_eq!(
            launch_verdict(Outcome::Rejected, false),
            Some(Action::Abandon)
        );
        assert_eq!(
            launch_verdict(Outcome::Rejected, true),
            Some(Action::Continue)
        );
        assert_eq!(launch_verdict(Outcome::Waiting, false), None);
        assert_eq!(launch_verdict(Outcome::Retry, true), None);
    }
}
