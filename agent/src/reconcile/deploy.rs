//! A deploy as its steps, in the order of SPEC's flow: fetch (2 and 3, [`crate::fetch::release`])
//! → the new release's pre-activate hook → switch (4) → restart (5) → health (6) → its validate
//! hook → commit (7), or the revert of [`super::revert`]. Also the steps a deploy shares with a
//! revert: activating a release (restart and health gate), and pruning old ones.

use super::ending::Ending;
use super::{Agent, Error, Outcome, Parts};
use crate::events::{emit, Event, Fields};
use crate::fetch::{self, Disposition};
use crate::health::{self, Policy};
use crate::hooks::Hook;
use crate::metrics::{Phase, Timings};
use crate::plan;
use crate::service::ServiceManager;
use crate::state::{Request, State, Verdict};
use crate::value::Desired;
use crate::version::Version;
use crate::{failpoint, notify};
use std::time::Instant;

impl<P: Parts> Agent<P> {
    pub(super) async fn deploy(
        &mut self,
        state: &mut State,
        request: Request,
        desired: Desired,
        download: bool,
    ) -> Outcome {
        let version = desired.version.clone();
        let previous = state.good.clone().filter(|g| g != version.as_str());
        let fields = Fields {
            version: Some(version.as_str()),
            previous_version: previous.as_deref(),
            parameter_version: Some(request.parameter_version),
            ..Fields::default()
        };
        // An artifact that is not there yet is said once per request, not every poll: its
        // deploy_started too (the daemon only).
        let waited = self.mode == super::Mode::Daemon
            && self.reported.as_ref() == Some(&(request.clone(), Event::PollFailed));
        if !waited {
            emit(
                Event::DeployStarted,
                &fields,
                &match &previous {
                    Some(p) => format!("Deploying {version} (running {p})"),
                    None => format!("Deploying {version}"),
                },
            );
        }
        notify::status(&format!("deploying {version}"));
        self.timings = Timings::started();

        // 2 and 3. Fetch, verify and unpack.
        if download {
            let job = fetch::Job {
                artifact: &self.config.artifact,
                owner: self.config.release.owner.as_deref(),
                layout: &self.layout,
                desired: &desired,
                fields: &fields,
            };
            if let Err(failure) = fetch::release(&self.store, &job, &mut self.timings).await {
                return self.stopped_before_switch(
                    state,
                    request,
                    &version,
                    &fields,
                    failure.into(),
                );
            }
        }

        // The new release's pre-activate hook (migrations), before anything is switched.
        if let Err(error) = self
            .run_hook(Hook::PreActivate, version.as_str(), &fields)
            .await
        {
            return self.stopped_before_switch(state, request, &version, &fields, error);
        }

        // One of the fleet's slots for instances out of service, then out of the load
        // balancer, drained, while the old release still serves what is in flight: a call
        // that fails stops the deploy before anything is switched.
        if let Err(outcome) = self.take_lease(&request, &fields).await {
            return outcome;
        }
        if let Err(error) = self.leave_service(state, &fields).await {
            self.rejoin_if_left(state).await;
            return self.stopped_before_switch(state, request, &version, &fields, error);
        }

        // 4. Switch. On failure `current` is unchanged, and the next pass tries again.
        if self.switch(state, &version, &request).is_err() {
            self.rejoin_if_left(state).await;
            return Outcome::Retry;
        }
        emit(
            Event::Switched,
            &fields,
            &format!("Switched current to {version}"),
        );
        failpoint::hit("after_switch");

        // 5 and 6. Restart and health, then the new release's validate hook (smoke tests).
        let activated = (self.activate_and_validate(state, version.as_str(), &fields)).await;
        // A revert's restart and health gate are not this deploy's phases.
        self.timings.close();
        match activated {
            Ok(()) => {
                // 7. Commit.
                failpoint::hit("before_commit");
                state.commit(version.as_str(), Some(request.clone()));
                self.commit_environment(state);
                let ending = Ending {
                    result: Verdict::Deployed,
                    version: &version,
                    request: Some(request),
                    error: None,
                    message: format!("Deployed {version}"),
                };
                let deployed = self.finish(state, ending, &fields);
                failpoint::hit("after_commit");
                self.prune(state);
                // Reported, not acted on: the deploy stands.
                let _ = self
                    .run_hook(Hook::PostActivate, version.as_str(), &fields)
                    .await;
                deployed
            }
            Err(error) => {
                self.revert(state, request, &version, previous.as_deref(), error)
                    .await
            }
        }
    }

    /// 4: points `current` at `version`, with the switch recorded first so that a crash can be
    /// undone; the app's new environment file, if its settings changed, goes in with it. On
    /// failure `current` is unchanged and the state says so (the error is logged).
    pub(super) fn switch(
        &self,
        state: &mut State,
        version: &Version,
        request: &Request,
    ) -> Result<(), Error> {
        let new_environment = self.environment_change();
        state.begin_switch(
            version.as_str(),
            Some(request.clone()),
            new_environment.is_some(),
        );
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot save state before the switch");
            state.abort_switch();
            return Err(e.into());
        }
        failpoint::hit("after_pending_saved");
        if let Some(text) = &new_environment {
            if let Err(e) = self.write_environment(text) {
                tracing::error!(target: "drover", event = crate::events::Event::EnvironmentFailed.as_str(), error = %e, "cannot write the environment file; nothing switched");
                state.abort_switch();
                let _ = self.save(state);
                return Err(e.into());
            }
        }
        if let Err(e) = self.layout.switch(version.as_str()) {
            // A new environment file stays pending: the next pass puts the good one back.
            tracing::error!(target: "drover", event = crate::events::Event::SwitchFailed.as_str(), error = %e, "switch failed; current is unchanged");
            state.switch_failed();
            let _ = self.save(state);
            return Err(e.into());
        }
        Ok(())
    }

    /// A deploy that stopped before the switch (no release came of the fetch, or the new
    /// release's pre-activate hook failed): wait, retry later, or remember the request as
    /// failed, as [`Error::disposition`] says. `current` was not touched.
    pub(super) fn stopped_before_switch(
        &mut self,
        state: &mut State,
        request: Request,
        version: &Version,
        fields: &Fields<'_>,
        error: Error,
    ) -> Outcome {
        let disposition = error.disposition();
        let fetching = matches!(error, Error::Fetch(_));
        let error = crate::reach::Fix::explained(&error);
        match disposition {
            Disposition::Wait => {
                if self.should_report(&request, Event::PollFailed) {
                    let message = format!("The artifact of {version} is not there yet: {error}");
                    emit(Event::PollFailed, &fields.with_error(&error), &message);
                }
                Outcome::Waiting
            }
            Disposition::Retry => {
                // Another failure came between: a missing artifact is news again after it.
                if self.reported.as_ref() == Some(&(request.clone(), Event::PollFailed)) {
                    self.reported = None;
                }
                let message = match fetching {
                    true => format!("Fetching {version} failed, will retry: {error}"),
                    false => format!(
                        "Deploy of {version} stopped before the switch, will retry: {error}"
                    ),
                };
                emit(Event::PollFailed, &fields.with_error(&error), &message);
                Outcome::Retry
            }
            Disposition::Reject => {
                state.remember_failed(request.clone());
                let (result, message) = match fetching {
                    true => (
                        Verdict::Rejected,
                        format!("Rejected the artifact of {version}: {error}"),
                    ),
                    false => (
                        Verdict::Aborted,
                        format!("Deploy of {version} aborted before the switch: {error}"),
                    ),
                };
                let ending = Ending {
                    result,
                    version,
                    request: Some(request),
                    message,
                    error: Some(error),
                };
                self.finish(state, ending, fields)
            }
        }
    }

    /// 5 and 6 for one version: out of the load balancer, restart every unit, the health gate,
    /// and back in.
    pub(super) async fn activate(
        &mut self,
        state: &mut State,
        version: &str,
        fields: &Fields<'_>,
    ) -> Result<(), Error> {
        self.activate_with(state, version, fields, None).await
    }

    /// The whole gate a change must pass: [`Agent::activate`] with `version`'s validate hook
    /// after drover's health gate and before the load balancer's.
    pub(super) async fn activate_and_validate(
        &mut self,
        state: &mut State,
        version: &str,
        fields: &Fields<'_>,
    ) -> Result<(), Error> {
        let validate = Some(Hook::Validate);
        self.activate_with(state, version, fields, validate).await
    }

    async fn activate_with(
        &mut self,
        state: &mut State,
        version: &str,
        fields: &Fields<'_>,
        hook: Option<Hook>,
    ) -> Result<(), Error> {
        self.leave_service(state, fields).await?;
        let started = Instant::now();
        let restarted = self.restart_units(fields).await;
        self.timings.since(Phase::Restart, started);
        restarted?;
        failpoint::hit("after_restart");
        let started = Instant::now();
        let healthy = self.health_gate().await;
        self.timings.since(Phase::Health, started);
        match healthy {
            Ok(()) => emit(
                Event::HealthPassed,
                fields,
                &format!("{version} is healthy"),
            ),
            Err(e) => {
                let error = e.to_string();
                emit(
                    Event::HealthFailed,
                    &fields.with_error(&error),
                    &format!("{version} is not healthy: {error}"),
                );
                return Err(e.into());
            }
        }
        if let Some(hook) = hook {
            self.run_hook(hook, version, fields).await?;
        }
        self.rejoin_service(state, fields).await
    }

    pub(super) async fn restart_units(&self, fields: &Fields<'_>) -> Result<(), Error> {
        for unit in &self.config.service.units {
            match self.services.restart(unit).await {
                Ok(()) => emit(
                    Event::UnitRestarted,
                    &Fields {
                        unit: Some(unit),
                        ..*fields
                    },
                    &format!("Restarted {unit}"),
                ),
                Err(e) => {
                    let error = e.to_string();
                    emit(
                        Event::HealthFailed,
                        &Fields {
                            unit: Some(unit),
                            error: Some(&error),
                            ..*fields
                        },
                        &format!("Restarting {unit} failed: {error}"),
                    );
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// The health gate over the app's units, with `[health]`'s policy.
    pub(super) async fn health_gate(&self) -> Result<(), health::HealthError> {
        health::wait_healthy(
            self.probe.as_ref(),
            &self.services,
            &self.config.service.units,
            self.policy(),
        )
        .await
    }

    pub(super) fn policy(&self) -> Policy {
        let h = &self.config.health;
        Policy {
            timeout: h.timeout,
            interval: h.interval,
            successes: h.successes,
        }
    }

    /// Old releases beyond `keep`, never the active one or the previous good one.
    pub(super) fn prune(&self, state: &State) {
        let Ok(releases) = self.layout.list() else {
            return;
        };
        let active = self.layout.active().ok().flatten();
        let protect: Vec<&str> = [
            active.as_deref(),
            state.good.as_deref(),
            state.previous.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        for version in plan::prune_plan(&releases, self.config.release.keep, &protect) {
            match self.layout.discard(&version) {
                Ok(()) => {
                    tracing::info!(target: "drover", event = crate::events::Event::ReleasePruned.as_str(), version = %version, "pruned old release")
                }
                Err(e) => {
                    tracing::warn!(target: "drover", event = crate::events::Event::ReleasePruned.as_str(), error = %e, "pruning failed")
                }
            }
        }
    }
}
