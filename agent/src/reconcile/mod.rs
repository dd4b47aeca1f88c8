//! The reconcile loop: one pass of SPEC's numbered flow per call, through the small traits of
//! [`crate::source`], [`crate::store`], [`crate::service`] and [`crate::health`].
//!
//! 1. desired version → 2. fetch + verify → 3. unpack → 4. switch → 5. restart → 6. health →
//! 7. commit, or switch back to the previous good release.
//!
//! What to do is decided by [`crate::plan`]; this module performs it and reports each step as a
//! journal event. State changes are computed in memory and saved in one atomic write per step, and
//! a switch in flight is recorded first, so an agent killed at any point finds its way back.

mod environment;
mod fleet;
mod hooks;

use std::path::PathBuf;

use crate::config::Config;
use crate::environment::Settings;
use crate::events::{emit, Event, Fields};
use crate::fetch::{self, FetchError};
use crate::fsutil::{IoContext, PathError};
use crate::health::{self, HealthProbe, Policy};
use crate::hooks::Hook;
use crate::plan::{self, Facts, Step};
use crate::releases::Layout;
use crate::service::ServiceManager;
use crate::source::{DesiredSource, SourceError};
use crate::state::{self, Outcome as Record, Pending, Request, State, StateFile};
use crate::store::{ArtifactStore, StoreError};
use crate::unpack::{self, Limits};
use crate::version::{self, Desired, Version};
use crate::webhook::Webhook;
use crate::{failpoint, owner};
use crate::{notify, state::Result as Res};

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
        }
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

/// The outside world a pass works through: where the desired version comes from, where the
/// artifacts are, the service manager and the health probe. One bundle, so that each file of
/// the loop names it once: `impl<P: Parts> Agent<P>`.
pub trait Parts {
    type Source: DesiredSource;
    type Store: ArtifactStore;
    type Services: ServiceManager;
    type Probe: HealthProbe;
}

impl<S: DesiredSource, A: ArtifactStore, M: ServiceManager, H: HealthProbe> Parts for (S, A, M, H) {
    type Source = S;
    type Store = A;
    type Services = M;
    type Probe = H;
}

pub struct Agent<P: Parts> {
    config: Config,
    source: P::Source,
    store: P::Store,
    services: P::Services,
    probe: Option<P::Probe>,
    layout: Layout,
    state_file: StateFile,
    mode: Mode,
    /// The last request reported as skipped, invalid, waiting for its turn or halted, and how.
    reported: Option<(Request, Event)>,
    /// `[environment]`: the settings read this pass.
    settings: Option<Settings>,
    /// The failed settings last reported as skipped.
    reported_environment: Option<String>,
    webhook: Option<Webhook>,
    /// `[fleet]` and rollouts: where this instance's id comes from.
    identity: Option<crate::fleet::Identity>,
    /// What the status object last written says.
    reported_status: Option<fleet::Written>,
}

/// Why a download or unpack did not produce a release.
enum FetchFailure {
    /// The artifact is bad: remember the request as failed.
    Rejected(String),
    /// The object is not there (yet): an upload may still be on its way.
    Missing(String),
    /// The network, the API or the disk: try again later.
    Transient(String),
}

impl From<FetchError> for FetchFailure {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::Store(StoreError::NotFound { .. }) => FetchFailure::Missing(e.to_string()),
            e if e.is_artifact_fault() => FetchFailure::Rejected(e.to_string()),
            e => FetchFailure::Transient(e.to_string()),
        }
    }
}

impl From<unpack::UnpackError> for FetchFailure {
    fn from(e: unpack::UnpackError) -> Self {
        if e.is_artifact_fault() {
            FetchFailure::Rejected(e.to_string())
        } else {
            FetchFailure::Transient(e.to_string())
        }
    }
}

/// Everything else that can stop a fetch (the staging area, a task, the owner's chown) is this
/// machine's trouble, not the artifact's.
impl From<PathError> for FetchFailure {
    fn from(e: PathError) -> Self {
        FetchFailure::Transient(e.to_string())
    }
}

impl<S: DesiredSource, A: ArtifactStore, M: ServiceManager, H: HealthProbe> Agent<(S, A, M, H)> {
    pub fn new(
        config: Config,
        source: S,
        store: A,
        services: M,
        probe: Option<H>,
        mode: Mode,
    ) -> Self {
        Self {
            layout: Layout::new(&config.release.root),
            state_file: StateFile::new(&config.agent.state_dir),
            config,
            source,
            store,
            services,
            probe,
            mode,
            reported: None,
            settings: None,
            reported_environment: None,
            webhook: None,
            identity: None,
            reported_status: None,
        }
    }
}

impl<P: Parts> Agent<P> {
    /// Where the instance id comes from, for rollouts and `[fleet]` status objects.
    pub fn with_identity(mut self, identity: crate::fleet::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Sends `deployed`, `reverted`, `revert_failed` and `deploy_aborted` to `[notify]`'s webhook.
    pub fn with_webhook(mut self, webhook: Webhook) -> Self {
        self.webhook = Some(webhook);
        self
    }

    /// Waits up to `within` for webhook notices still being sent (before `drover once` exits).
    pub async fn flush_notices(&self, within: std::time::Duration) {
        if let Some(webhook) = &self.webhook {
            webhook.flush(within).await;
        }
    }

    /// An event that is also a notice: to the journal, and to the webhook when there is one.
    fn announce(&self, event: Event, fields: &Fields<'_>, message: &str) {
        emit(event, fields, message);
        if let Some(webhook) = &self.webhook {
            webhook.send(event, fields, message);
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Whether a release runs and nothing was left in flight: the agent may take its time
    /// before the first pass. Otherwise the first pass must come at once (to deploy a first
    /// release, or to finish an interrupted switch by going back to the good one).
    pub fn settled(&self) -> bool {
        let state = self.state_file.load().unwrap_or_default();
        self.layout.active().ok().flatten().is_some()
            && state.pending.is_none()
            && !state.environment_pending
    }

    /// One line for `systemctl status drover`: what runs, and how the last pass ended.
    pub fn status_line(&self, outcome: Outcome) -> String {
        match self.layout.active().ok().flatten() {
            Some(active) => format!("running {active}; last pass: {}", outcome.as_str()),
            None => format!("no release yet; last pass: {}", outcome.as_str()),
        }
    }

    /// One reconcile pass, holding the state lock throughout.
    pub async fn reconcile(&mut self) -> Outcome {
        let _lock = match lock_state(&self.config.agent.state_dir) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(target: "drover", error = %e, "cannot lock the state directory");
                return Outcome::Retry;
            }
        };
        let mut state = match self.prepare().await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(target: "drover", error = %e, "cannot prepare the release root or state");
                return Outcome::Retry;
            }
        };

        // 1. Desired version.
        let parameter = match self.source.read().await {
            Ok(p) => p,
            Err(e) => {
                emit(
                    Event::PollFailed,
                    &Fields {
                        error: Some(&e.to_string()),
                        ..Fields::default()
                    },
                    &format!("Reading the desired version failed: {e}"),
                );
                return match e {
                    SourceError::NotFound { .. } => Outcome::Waiting,
                    SourceError::Throttled { .. } => Outcome::Throttled,
                    _ => Outcome::Retry,
                };
            }
        };
        if let Err(outcome) = self.read_settings().await {
            return outcome;
        }
        let put_at = parameter.modified;
        let request = Request {
            value: parameter.value,
            parameter_version: parameter.version,
        };
        let desired = match version::parse_value(&request.value) {
            Ok(d) => d,
            Err(e) => return self.invalid(&mut state, request, &e.to_string()),
        };

        let active = self.layout.active().ok().flatten();
        let step = plan::next_step(&Facts {
            request: &request,
            desired: &desired.version,
            state: &state,
            active: active.as_deref(),
            on_disk: self.layout.has_release(desired.version.as_str()),
        });
        tracing::debug!(target: "drover", ?step, version = %desired.version, "decided");
        let mut place = fleet::Place::default();
        let (outcome, tried) = match step {
            Step::SkipFailed => {
                let skipped = self.skip(&request, &desired.version);
                (
                    self.hold(&mut state, active.as_deref(), skipped).await,
                    false,
                )
            }
            Step::InSync => {
                let outcome = self.in_sync(&mut state, request.clone(), &desired.version);
                (outcome.await, false)
            }
            // Across a fleet: this instance's turn in a rollout, and no fleet-wide halt.
            Step::Switch | Step::Fetch => {
                match self.gate(&request, &desired, put_at, &mut place).await {
                    Err(held) => (self.hold(&mut state, active.as_deref(), held).await, false),
                    Ok(()) => {
                        let download = step == Step::Fetch;
                        let deploy =
                            self.deploy(&mut state, request.clone(), desired.clone(), download);
                        (deploy.await, true)
                    }
                }
            }
        };
        self.report(&state, &request, &desired, &place, outcome, tried)
            .await;
        outcome
    }

    /// Not adopting the desired version (`outcome` says why, and stays the pass's outcome): what
    /// runs is still the last good version, and its settings may change.
    async fn hold(&mut self, state: &mut State, active: Option<&str>, outcome: Outcome) -> Outcome {
        if let Some(Ok(running)) = active.map(Version::parse) {
            if state.good.as_deref() == Some(running.as_str()) {
                // Its own events say how that went.
                let _ = self.apply_environment(state, &running).await;
            }
        }
        outcome
    }

    /// Loads the state, cleans the staging area and finishes a switch an earlier run left in
    /// flight by returning to the last good release.
    async fn prepare(&mut self) -> Result<State, String> {
        self.layout.ensure().map_err(|e| e.to_string())?;
        let (removed, left) = self.layout.clean_staging().map_err(|e| e.to_string())?;
        for path in removed {
            tracing::info!(target: "drover", path = %path.display(), "removed leftover staging");
        }
        for e in left {
            tracing::warn!(target: "drover", error = %e, "cannot remove leftover staging");
        }
        let mut state = match self.state_file.load() {
            Ok(s) => s,
            Err(e) => {
                let aside = self.state_file.path().with_extension("json.corrupt");
                tracing::error!(target: "drover", error = %e, aside = %aside.display(),
                    "state is unreadable; moving it aside and starting afresh");
                std::fs::rename(self.state_file.path(), &aside).map_err(|e| e.to_string())?;
                State::default()
            }
        };
        if let Some(pending) = state.pending.take() {
            self.recover(&mut state, &pending).await;
            self.save(&state)?;
        } else if state.environment_pending {
            if self.put_back_environment(&mut state) {
                let _ = self.restart_units(&Fields::default()).await;
            }
            self.save(&state)?;
        }
        Ok(state)
    }

    /// Returns to the last good release after a deploy was interrupted. The units are restarted
    /// whichever way `current` points now: they may be running the interrupted version's code
    /// (a crash after the switch back but before the restart leaves exactly that).
    async fn recover(&mut self, state: &mut State, pending: &Pending) {
        let environment_back = state.environment_pending && self.put_back_environment(state);
        // Without a good release on disk (a first deploy), nothing to go back to: the next pass
        // tries again; only a restored environment file needs the units restarted.
        let Some(good) = state.good.clone().filter(|g| self.layout.has_release(g)) else {
            if environment_back {
                let _ = self.restart_units(&Fields::default()).await;
            }
            return;
        };
        let fields = Fields {
            version: Some(&pending.version),
            previous_version: Some(&good),
            parameter_version: pending.request.as_ref().map(|r| r.parameter_version),
            ..Fields::default()
        };
        if self.layout.active().ok().flatten().as_deref() != Some(good.as_str()) {
            if let Err(e) = self.layout.switch(&good) {
                tracing::error!(target: "drover", error = %e, "cannot switch back after an interrupted deploy");
                return;
            }
            emit(
                Event::Switched,
                &fields,
                &format!(
                    "Deploy of {} was interrupted; switched back to {good}",
                    pending.version
                ),
            );
        }
        // Best effort: the next pass checks health and retries the deploy.
        let _ = self.restart_units(&fields).await;
    }

    /// A new environment file was in place, not yet committed, when the agent stopped: the last
    /// good one goes back (the caller restarts the units for it, once) and the next pass tries
    /// again. Returns whether the file was put back.
    fn put_back_environment(&self, state: &mut State) -> bool {
        state.environment_pending = false;
        match self.restore_environment() {
            Ok(()) => {
                tracing::warn!(target: "drover", "An environment change was interrupted; put the last good environment file back");
                true
            }
            Err(e) => {
                tracing::error!(target: "drover", error = %e, "cannot put the last good environment file back");
                false
            }
        }
    }

    fn invalid(&mut self, state: &mut State, request: Request, error: &str) -> Outcome {
        if self.should_report(&request, Event::PollFailed) {
            emit(
                Event::PollFailed,
                &Fields {
                    parameter_version: Some(request.parameter_version),
                    error: Some(error),
                    ..Fields::default()
                },
                &format!("Ignoring the parameter's value: {error}"),
            );
            state.last = Some(Record {
                result: Res::Invalid,
                version: None,
                request: Some(request),
                error: Some(error.to_owned()),
                at: state::now(),
            });
            let _ = self.save(state);
        }
        Outcome::Invalid
    }

    fn skip(&mut self, request: &Request, version: &Version) -> Outcome {
        if self.should_report(request, Event::SkippedFailedVersion) {
            emit(
                Event::SkippedFailedVersion,
                &Fields {
                    version: Some(version.as_str()),
                    parameter_version: Some(request.parameter_version),
                    ..Fields::default()
                },
                &format!("Not retrying {version}: this request failed before; put the parameter again to retry"),
            );
        }
        Outcome::Skipped
    }

    /// Whether to report `event` about `request`: once, not every poll, in the daemon; every
    /// time in `once`.
    fn should_report(&mut self, request: &Request, event: Event) -> bool {
        let key = (request.clone(), event);
        if self.mode == Mode::Daemon && self.reported.as_ref() == Some(&key) {
            return false;
        }
        self.reported = Some(key);
        true
    }

    async fn in_sync(&mut self, state: &mut State, request: Request, version: &Version) -> Outcome {
        if state.applied.as_ref() != Some(&request) {
            // A re-put of the running version: it is the request `drover rollback` would undo.
            state.applied = Some(request);
            let _ = self.save(state);
        }
        if let Some(outcome) = self.apply_environment(state, version).await {
            return outcome;
        }
        if self.mode == Mode::Daemon {
            return Outcome::InSync;
        }
        match health::wait_healthy(
            self.probe.as_ref(),
            &self.services,
            &self.config.service.units,
            self.policy(),
        )
        .await
        {
            Ok(()) => Outcome::InSync,
            Err(e) => {
                emit(
                    Event::HealthFailed,
                    &Fields {
                        version: Some(version.as_str()),
                        error: Some(&e.to_string()),
                        ..Fields::default()
                    },
                    &format!("{version} is active but not healthy: {e}"),
                );
                Outcome::Unhealthy
            }
        }
    }

    async fn deploy(
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
        emit(
            Event::DeployStarted,
            &fields,
            &match &previous {
                Some(p) => format!("Deploying {version} (running {p})"),
                None => format!("Deploying {version}"),
            },
        );
        notify::status(&format!("deploying {version}"));

        // 2 and 3. Fetch, verify and unpack.
        if download {
            if let Err(failure) = self.fetch_release(&desired, &fields).await {
                return self.fetch_failed(state, request, &version, &fields, failure);
            }
        }

        // The new release's pre-activate hook (migrations), before anything is switched.
        if let Err(error) = self
            .run_hook(Hook::PreActivate, version.as_str(), &fields)
            .await
        {
            return self.abort(state, request, &version, &fields, error);
        }

        // 4. Switch.
        if self.switch(state, &version, &request).is_err() {
            return Outcome::Retry;
        }
        emit(
            Event::Switched,
            &fields,
            &format!("Switched current to {version}"),
        );
        failpoint::hit("after_switch");

        // 5 and 6. Restart and health, then the new release's validate hook (smoke tests).
        match self.activate_and_validate(version.as_str(), &fields).await {
            Ok(()) => {
                // 7. Commit.
                failpoint::hit("before_commit");
                state.commit(version.as_str(), Some(request.clone()));
                self.commit_environment(state);
                self.record(state, Res::Deployed, &version, Some(request), None);
                self.announce(Event::Deployed, &fields, &format!("Deployed {version}"));
                failpoint::hit("after_commit");
                self.prune(state);
                // Reported, not acted on: the deploy stands.
                let _ = self
                    .run_hook(Hook::PostActivate, version.as_str(), &fields)
                    .await;
                Outcome::Deployed
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
    fn switch(&self, state: &mut State, version: &Version, request: &Request) -> Result<(), ()> {
        let new_environment = self.environment_change();
        state.pending = Some(Pending {
            version: version.to_string(),
            request: Some(request.clone()),
        });
        state.environment_pending = new_environment.is_some();
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", error = %e, "cannot save state before the switch");
            state.pending = None;
            state.environment_pending = false;
            return Err(());
        }
        failpoint::hit("after_pending_saved");
        if let Some(text) = &new_environment {
            if let Err(e) = self.write_environment(text) {
                tracing::error!(target: "drover", error = %e, "cannot write the environment file; nothing switched");
                state.pending = None;
                state.environment_pending = false;
                let _ = self.save(state);
                return Err(());
            }
        }
        if let Err(e) = self.layout.switch(version.as_str()) {
            // A new environment file stays pending: the next pass puts the good one back.
            tracing::error!(target: "drover", error = %e, "switch failed; current is unchanged");
            state.pending = None;
            let _ = self.save(state);
            return Err(());
        }
        Ok(())
    }

    /// A fetch that produced no release: wait, retry later, or reject the request for good.
    fn fetch_failed(
        &self,
        state: &mut State,
        request: Request,
        version: &Version,
        fields: &Fields<'_>,
        failure: FetchFailure,
    ) -> Outcome {
        match failure {
            FetchFailure::Missing(error) => {
                let message = format!("The artifact of {version} is not there yet: {error}");
                emit(Event::PollFailed, &fields.with_error(&error), &message);
                Outcome::Waiting
            }
            FetchFailure::Transient(error) => {
                let message = format!("Fetching {version} failed, will retry: {error}");
                emit(Event::PollFailed, &fields.with_error(&error), &message);
                Outcome::Retry
            }
            FetchFailure::Rejected(error) => {
                let message = format!("Rejected the artifact of {version}: {error}");
                emit(
                    Event::ArtifactRejected,
                    &fields.with_error(&error),
                    &message,
                );
                state.remember_failed(request.clone());
                self.record(state, Res::Rejected, version, Some(request), Some(error));
                Outcome::Rejected
            }
        }
    }

    /// 7, the other way: back to the previous good release, restarted and checked again.
    async fn revert(
        &mut self,
        state: &mut State,
        request: Request,
        version: &Version,
        previous: Option<&str>,
        error: String,
    ) -> Outcome {
        state.remember_failed(request.clone());
        // Saved before switching back, so that an agent killed during the revert does not try
        // the failed version once more after it restarts.
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", error = %e, "cannot save state");
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
            self.announce(
                Event::RevertFailed,
                &fields.with_error(&why),
                &format!("Deploy of {version} failed and there is nothing to go back to"),
            );
            self.record(state, Res::Failed, version, Some(request), Some(why));
            return Outcome::Failed;
        };
        if let Err(e) = self.layout.switch(previous) {
            let why = format!("{error}; switching back failed: {e}");
            self.announce(
                Event::RevertFailed,
                &fields.with_error(&why),
                &format!("Could not switch back to {previous}"),
            );
            self.record(state, Res::RevertFailed, version, Some(request), Some(why));
            return Outcome::RevertFailed;
        }
        emit(
            Event::Switched,
            &fields,
            &format!("Switched current back to {previous}"),
        );
        failpoint::hit("after_revert_switch");
        if state.environment_pending {
            if let Err(e) = self.restore_environment() {
                tracing::error!(target: "drover", error = %e, "cannot put the last good environment file back");
            }
        }
        match self.activate(previous, &fields).await {
            Ok(()) => {
                self.announce(
                    Event::Reverted,
                    &fields.with_error(&error),
                    &format!("Reverted to {previous}: {version} failed: {error}"),
                );
                self.record(state, Res::Reverted, version, Some(request), Some(error));
                Outcome::Reverted
            }
            Err(e) => {
                let why = format!("{error}; {previous} is not healthy either: {e}");
                self.announce(
                    Event::RevertFailed,
                    &fields.with_error(&why),
                    &format!("Reverted to {previous}, but it is not healthy either"),
                );
                self.record(state, Res::RevertFailed, version, Some(request), Some(why));
                Outcome::RevertFailed
            }
        }
    }

    /// Records how a deploy ended, clearing the switch in flight, in one save.
    fn record(
        &self,
        state: &mut State,
        result: Res,
        version: &Version,
        request: Option<Request>,
        error: Option<String>,
    ) {
        state.pending = None;
        state.environment_pending = false;
        state.last = Some(Record {
            result,
            version: Some(version.to_string()),
            request,
            error,
            at: state::now(),
        });
        if let Err(e) = self.save(state) {
            tracing::error!(target: "drover", error = %e, "cannot save state");
        }
    }

    async fn fetch_release(
        &self,
        desired: &Desired,
        fields: &Fields<'_>,
    ) -> Result<(), FetchFailure> {
        let staging = self.layout.new_staging("fetch", &desired.version)?;
        let result = self.fetch_into(&staging, desired, fields).await;
        let _ = crate::tree::remove_tree(&staging);
        result
    }

    async fn fetch_into(
        &self,
        staging: &std::path::Path,
        desired: &Desired,
        fields: &Fields<'_>,
    ) -> Result<(), FetchFailure> {
        let artifact = &self.config.artifact;
        let key = artifact.key_for(&desired.version);
        // Looked up at each deploy, before the download: the user may be created (by cloud-init,
        // say) after drover starts, and until then there is no point in fetching.
        let owner = (self.config.release.owner.as_deref())
            .map(owner::lookup)
            .transpose()
            .map_err(FetchFailure::Transient)?;
        let expected =
            fetch::expected_digest(&self.store, &key, desired.sha256, artifact.download_timeout)
                .await?;
        // With trusted keys, the signature is read (and its key checked) before the download.
        let signature = match artifact.trusted_keys.is_empty() {
            true => None,
            false => Some(
                fetch::expected_signature(
                    &self.store,
                    &key,
                    &artifact.trusted_keys,
                    artifact.download_timeout,
                )
                .await?,
            ),
        };
        let tarball = staging.join("artifact.tar.gz");
        let downloaded = fetch::download(
            &self.store,
            &key,
            &tarball,
            expected,
            artifact.max_size,
            artifact.download_timeout,
            signature.as_ref().is_some_and(|s| s.is_prehashed()),
        )
        .await?;
        let signed_by = match &signature {
            None => String::new(),
            Some(sig) => {
                let signer = fetch::verify_signature(
                    sig,
                    &artifact.trusted_keys,
                    &artifact.binding(&desired.version),
                    &tarball,
                    &downloaded,
                )?;
                format!(", signed by key {signer}")
            }
        };
        let (digest, len) = (expected.to_string(), downloaded.len);
        emit(
            Event::ArtifactVerified,
            &Fields {
                sha256: Some(&digest),
                ..*fields
            },
            &format!(
                "Verified s3://{}/{key}: {len} bytes, sha256 {digest}{signed_by}",
                artifact.bucket
            ),
        );
        failpoint::hit("after_download");

        // 3. Unpack on a blocking thread, so the watchdog keeps being fed.
        let unpacked: PathBuf = staging.join("release");
        std::fs::create_dir(&unpacked).at("create directory", &unpacked)?;
        let limits = Limits {
            max_unpacked_size: artifact.max_unpacked_size,
            max_entries: artifact.max_entries,
        };
        let (src, dst) = (tarball.clone(), unpacked.clone());
        let (stats, given) = tokio::task::spawn_blocking(move || -> Result<_, FetchFailure> {
            let stats = unpack::unpack(&src, &dst, &limits)?;
            let given = owner.map(|o| crate::tree::give_tree(&dst, o)).transpose()?;
            // One flush for the files and their owner, before the rename makes them a release.
            crate::fsutil::sync_filesystem(&dst)?;
            Ok((stats, given))
        })
        .await
        .map_err(|e| FetchFailure::Transient(format!("unpack task: {e}")))??;
        tracing::info!(
            target: "drover",
            version = desired.version.as_str(),
            files = stats.files,
            dirs = stats.dirs,
            links = stats.links,
            bytes = stats.bytes,
            modes_stripped = stats.modes_stripped,
            writable_stripped = stats.writable_stripped,
            "Unpacked {}: {} files, {} directories, {} links, {} bytes{}",
            desired.version,
            stats.files,
            stats.dirs,
            stats.links,
            stats.bytes,
            unpack::stripped_note(&stats)
        );
        if let (Some(given), Some(spec)) = (given, &self.config.release.owner) {
            tracing::info!(target: "drover", version = desired.version.as_str(), owner = %spec,
                entries = given, "Gave {given} entries of {} to {spec}", desired.version);
        }
        let _ = std::fs::remove_file(&tarball);
        failpoint::hit("after_unpack");
        self.layout.install(&unpacked, &desired.version)?;
        failpoint::hit("after_install");
        Ok(())
    }

    /// 5 and 6 for one version: restart every unit, then the health gate.
    async fn activate(&self, version: &str, fields: &Fields<'_>) -> Result<(), String> {
        self.restart_units(fields).await?;
        failpoint::hit("after_restart");
        match health::wait_healthy(
            self.probe.as_ref(),
            &self.services,
            &self.config.service.units,
            self.policy(),
        )
        .await
        {
            Ok(()) => {
                emit(
                    Event::HealthPassed,
                    fields,
                    &format!("{version} is healthy"),
                );
                Ok(())
            }
            Err(e) => {
                let error = e.to_string();
                emit(
                    Event::HealthFailed,
                    &fields.with_error(&error),
                    &format!("{version} is not healthy: {error}"),
                );
                Err(error)
            }
        }
    }

    /// The whole gate a change must pass: [`Agent::activate`], then `version`'s validate hook.
    async fn activate_and_validate(
        &self,
        version: &str,
        fields: &Fields<'_>,
    ) -> Result<(), String> {
        self.activate(version, fields).await?;
        self.run_hook(Hook::Validate, version, fields).await
    }

    async fn restart_units(&self, fields: &Fields<'_>) -> Result<(), String> {
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
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn policy(&self) -> Policy {
        let h = &self.config.health;
        Policy {
            timeout: h.timeout,
            interval: h.interval,
            successes: h.successes,
        }
    }

    /// Old releases beyond `keep`, never the active one or the previous good one.
    fn prune(&self, state: &State) {
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
                    tracing::info!(target: "drover", version = %version, "pruned old release")
                }
                Err(e) => tracing::warn!(target: "drover", error = %e, "pruning failed"),
            }
        }
    }

    fn save(&self, state: &State) -> Result<(), String> {
        self.state_file.save(state).map_err(|e| e.to_string())
    }

    /// `drover rollback`: back to the previous good release now, remembering the request that
    /// brought the current one as failed. Returns whether the previous release is healthy.
    pub async fn rollback(&mut self) -> Result<bool, String> {
        let _lock = lock_state(&self.config.agent.state_dir).map_err(|e| e.to_string())?;
        let mut state = self.prepare().await?;
        let target = state
            .previous
            .clone()
            .ok_or("no previous good release to roll back to")?;
        if !self.layout.has_release(&target) {
            return Err(format!("previous release {target} is no longer on disk"));
        }
        let current = self.layout.active().ok().flatten();
        let current_version = current.as_deref().and_then(|c| Version::parse(c).ok());
        if let Some(applied) = state.applied.clone() {
            state.remember_failed(applied);
        }
        let fields = Fields {
            version: current.as_deref(),
            previous_version: Some(&target),
            ..Fields::default()
        };
        state.pending = Some(Pending {
            version: target.clone(),
            request: None,
        });
        self.save(&state)?;
        self.layout.switch(&target).map_err(|e| e.to_string())?;
        emit(
            Event::Switched,
            &fields,
            &format!("Switched current back to {target} (operator rollback)"),
        );
        let healthy = self.activate(&target, &fields).await;
        state.good = Some(target.clone());
        state.previous = None;
        state.applied = None;
        let rolled_back = Version::parse(&target).map_err(|e| e.to_string())?;
        match healthy {
            Ok(()) => {
                let from = current_version.map(|v| v.to_string()).unwrap_or_default();
                self.announce(
                    Event::Reverted,
                    &fields,
                    &format!("Rolled back from {from} to {target} by operator"),
                );
                self.record(&mut state, Res::RolledBack, &rolled_back, None, None);
                Ok(true)
            }
            Err(e) => {
                self.announce(
                    Event::RevertFailed,
                    &fields.with_error(&e),
                    &format!("Rolled back to {target}, but it is not healthy"),
                );
                self.record(&mut state, Res::RevertFailed, &rolled_back, None, Some(e));
                Ok(false)
            }
        }
    }
}

/// Serialises reconciles of the daemon with `drover rollback` and `drover once`.
fn lock_state(dir: &std::path::Path) -> Result<std::fs::File, PathError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)?;
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .at("open", &path)?;
    file.lock().at("lock", &path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    //! The flow with in-memory stand-ins for SSM, S3, systemd and the app. The same scenarios
    //! run against the real parts in `tests/`.

    use super::*;
    use crate::digest::Sha256Digest;
    use crate::fetch::tests::MemStore;
    use crate::service::UnitError;
    use crate::source::{Parameter, SourceError};
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::rc::Rc;

    struct MemSource(Rc<RefCell<Parameter>>);

    impl DesiredSource for MemSource {
        async fn read(&self) -> Result<Parameter, SourceError> {
            Ok(self.0.borrow().clone())
        }
    }

    #[derive(Default)]
    struct FakeUnits {
        restarts: Cell<u32>,
    }

    impl ServiceManager for Rc<FakeUnits> {
        async fn restart(&self, _: &str) -> Result<(), UnitError> {
            self.restarts.set(self.restarts.get() + 1);
            Ok(())
        }
        async fn is_failed(&self, _: &str) -> Result<bool, UnitError> {
            Ok(false)
        }
    }

    /// No systemd here: hooks run in a process group (crate::hooks has the scope's tests).
    impl crate::service::Confinement for Rc<FakeUnits> {
        async fn confine(&self, _: &str, _: &str, _: u32) -> Result<(), UnitError> {
            Err(UnitError::Unreachable("no systemd in these tests".into()))
        }
        async fn kill_all(&self, _: &str) -> Result<(), UnitError> {
            Ok(())
        }
    }

    /// The "app": healthy unless the active release contains a file named UNHEALTHY.
    struct ReleaseProbe(PathBuf);

    impl HealthProbe for ReleaseProbe {
        async fn probe(&self) -> Result<(), String> {
            if self.0.join("current/UNHEALTHY").exists() {
                Err("HTTP 500".into())
            } else {
                Ok(())
            }
        }
    }

    fn tarball(version: &str, healthy: bool) -> Vec<u8> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).unwrap();
        };
        add("VERSION", version.as_bytes());
        if !healthy {
            add("UNHEALTHY", b"");
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    struct World {
        _dir: tempfile::TempDir,
        root: PathBuf,
        parameter: Rc<RefCell<Parameter>>,
        units: Rc<FakeUnits>,
        agent: Agent<(MemSource, MemStore, Rc<FakeUnits>, ReleaseProbe)>,
    }

    impl World {
        fn new(releases: &[(&str, bool)]) -> Self {
            Self::with_config(releases, "")
        }

        /// With `extra` config sections, and the instance id `i-test`.
        fn with_config(releases: &[(&str, bool)], extra: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("app");
            let text = format!(
                "[artifact]\nbucket = \"b\"\n[release]\nroot = \"{}\"\nkeep = 2\n[agent]\nstate_dir = \"{}\"\n\
                 [health]\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"3s\"\ninterval = \"1s\"\nsuccesses = 2\n{extra}",
                root.display(),
                dir.path().join("state").display()
            );
            let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
            let mut objects = HashMap::new();
            for (v, healthy) in releases {
                let bytes = tarball(v, *healthy);
                objects.insert(
                    format!("releases/{v}.tar.gz.sha256"),
                    format!("{}  {v}.tar.gz\n", Sha256Digest::of(&bytes)).into_bytes(),
                );
                objects.insert(format!("releases/{v}.tar.gz"), bytes);
            }
            let parameter = Rc::new(RefCell::new(Parameter {
                value: String::new(),
                version: 0,
                modified: Some(std::time::SystemTime::now()),
            }));
            let units = Rc::new(FakeUnits::default());
            let agent = Agent::new(
                config,
                MemSource(parameter.clone()),
                MemStore(objects),
                units.clone(),
                Some(ReleaseProbe(root.clone())),
                Mode::Daemon,
            )
            .with_identity(crate::fleet::Identity::Fixed("i-test".into()));
            World {
                _dir: dir,
                root,
                parameter,
                units,
                agent,
            }
        }

        /// `drover promote`: a new parameter version every time.
        fn put(&self, value: &str) {
            let mut p = self.parameter.borrow_mut();
            p.value = value.into();
            p.version += 1;
        }

        fn active(&self) -> Option<String> {
            self.agent.layout().active().unwrap()
        }

        fn state(&self) -> State {
            StateFile::new(&self.root.parent().unwrap().join("state"))
                .load()
                .unwrap()
        }

        fn store_mut(&mut self) -> &mut HashMap<String, Vec<u8>> {
            &mut self.agent.store.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_deploy_upgrade_and_in_sync() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        assert_eq!(w.active().as_deref(), Some("1"));
        assert_eq!(
            std::fs::read_to_string(w.root.join("current/VERSION")).unwrap(),
            "1"
        );
        assert_eq!(w.units.restarts.get(), 1);
        assert_eq!(w.agent.reconcile().await, Outcome::InSync);
        assert_eq!(w.units.restarts.get(), 1, "in sync: nothing restarted");

        w.put("2");
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        let s = w.state();
        assert_eq!(
            (s.good.as_deref(), s.previous.as_deref()),
            (Some("2"), Some("1"))
        );
        assert_eq!(s.last.unwrap().result, Res::Deployed);
        assert!(s.pending.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_waits_for_this_instance_s_turn() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        // A whole day to spread over, starting now: position 0.0… would be the only one in.
        let position = crate::rollout::position("i-test", &Version::parse("2").unwrap());
        assert!(position > 0.001, "{position}");
        w.put(r#"{"version": "2", "rollout": {"duration": "1d"}}"#);
        assert_eq!(w.agent.reconcile().await, Outcome::AwaitingTurn);
        assert_eq!(w.active().as_deref(), Some("1"));
        assert_eq!(w.units.restarts.get(), 1);
        // The same rollout, started a day ago: everyone's turn has come.
        w.put(
            r#"{"version": "2", "rollout": {"start": "2000-01-01T00:00:00Z", "duration": "1d"}}"#,
        );
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        assert_eq!(w.active().as_deref(), Some("2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rollout_without_a_start_needs_to_know_when_the_value_was_put() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.parameter.borrow_mut().modified = None;
        w.put(r#"{"version": "2", "rollout": {"duration": "1m"}}"#);
        assert_eq!(w.agent.reconcile().await, Outcome::Invalid);
        assert_eq!(w.active().as_deref(), Some("1"));
        w.put(
            r#"{"version": "2", "rollout": {"start": "2000-01-01T00:00:00Z", "duration": "1m"}}"#,
        );
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_reported_by_the_fleet_halt_the_request_until_it_is_put_again() {
        let mut w = World::with_config(
            &[("1", true), ("2", true)],
            "[fleet]\nstatus_prefix = \"status/\"\nmax_failures = 2\n",
        );
        w.put("1");
        w.agent.reconcile().await;
        w.put("2");
        let n = w.parameter.borrow().version;
        for instance in ["i-a", "i-b"] {
            let key = crate::fleet::failure_key("status/", "2", n, instance);
            w.store_mut().insert(key, b"{}".to_vec());
        }
        assert_eq!(w.agent.reconcile().await, Outcome::Halted);
        assert_eq!(w.active().as_deref(), Some("1"));
        // The rollout's own threshold wins over the config's.
        w.put(r#"{"version": "2", "rollout": {"duration": "0s", "max_failures": 3}}"#);
        let n = w.parameter.borrow().version;
        for instance in ["i-a", "i-b"] {
            let key = crate::fleet::failure_key("status/", "2", n, instance);
            w.store_mut().insert(key, b"{}".to_vec());
        }
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    }

    #[tokio::test(start_paused = true)]
    async fn unhealthy_version_is_reverted_and_not_retried_until_put_again() {
        let mut w = World::new(&[("1", true), ("2", false)]);
        w.put("1");
        w.agent.reconcile().await;
        w.put("2");
        assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
        assert_eq!(w.active().as_deref(), Some("1"));
        let s = w.state();
        assert_eq!(s.good.as_deref(), Some("1"));
        assert_eq!(s.last.as_ref().unwrap().result, Res::Reverted);
        assert!(s.last.unwrap().error.unwrap().contains("HTTP 500"));
        let restarts = w.units.restarts.get();
        assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
        assert_eq!(
            w.units.restarts.get(),
            restarts,
            "a skipped request restarts nothing"
        );
        // The same value put again is a new request: it is tried (and fails) again.
        w.put("2");
        assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
    }

    #[tokio::test(start_paused = true)]
    async fn no_previous_release_leaves_the_failed_one_current() {
        let mut w = World::new(&[("1", false)]);
        w.put("1");
        assert_eq!(w.agent.reconcile().await, Outcome::Failed);
        assert_eq!(w.active().as_deref(), Some("1"));
        assert_eq!(w.state().last.unwrap().result, Res::Failed);
        assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
    }

    #[tokio::test(start_paused = true)]
    async fn digest_mismatch_is_rejected_before_anything_is_unpacked() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.store_mut()
            .insert("releases/2.tar.gz".into(), tarball("evil", true));
        w.put("2");
        assert_eq!(w.agent.reconcile().await, Outcome::Rejected);
        assert_eq!(w.active().as_deref(), Some("1"));
        assert!(!w.root.join("releases/2").exists());
        assert_eq!(
            std::fs::read_dir(w.root.join(".staging")).unwrap().count(),
            0
        );
        assert_eq!(w.state().last.unwrap().result, Res::Rejected);

        // A digest in the JSON value wins over the .sha256 object.
        let good = Sha256Digest::of(&tarball("evil", true));
        w.parameter.borrow_mut().version += 1;
        w.parameter.borrow_mut().value = format!(r#"{{"version":"2","sha256":"{good}"}}"#);
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        assert_eq!(
            std::fs::read_to_string(w.root.join("current/VERSION")).unwrap(),
            "evil"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_on_disk_is_switched_to_without_download() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.put("2");
        w.agent.reconcile().await;
        w.store_mut().clear();
        w.put("1");
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        assert_eq!(w.active().as_deref(), Some("1"));
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_change_nothing() {
        let mut w = World::new(&[("1", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.put("9");
        assert_eq!(
            w.agent.reconcile().await,
            Outcome::Waiting,
            "not found yet: maybe still uploading"
        );
        assert_eq!(w.active().as_deref(), Some("1"));
        assert!(w.state().failed.is_empty());
        w.put("not a version!");
        assert_eq!(w.agent.reconcile().await, Outcome::Invalid);
        assert_eq!(w.active().as_deref(), Some("1"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupted_switch_goes_back_to_the_good_release_then_retries() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.put("2");
        w.agent.reconcile().await;
        // As if killed after switching to 3 and before committing it.
        std::fs::create_dir_all(w.root.join("releases/3")).unwrap();
        w.agent.layout().switch("3").unwrap();
        let mut s = w.state();
        s.pending = Some(Pending {
            version: "3".into(),
            request: None,
        });
        StateFile::new(&w.root.parent().unwrap().join("state"))
            .save(&s)
            .unwrap();
        std::fs::create_dir_all(w.root.join(".staging/fetch-3-1/release")).unwrap();

        assert_eq!(w.agent.reconcile().await, Outcome::InSync);
        assert_eq!(w.active().as_deref(), Some("2"));
        assert!(w.state().pending.is_none());
        assert_eq!(
            std::fs::read_dir(w.root.join(".staging")).unwrap().count(),
            0,
            "staging cleaned"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_returns_to_previous_and_skips_the_current_request() {
        let mut w = World::new(&[("1", true), ("2", true)]);
        w.put("1");
        w.agent.reconcile().await;
        w.put("2");
        w.agent.reconcile().await;
        assert_eq!(w.agent.rollback().await, Ok(true));
        assert_eq!(w.active().as_deref(), Some("1"));
        assert_eq!(w.state().last.unwrap().result, Res::RolledBack);
        assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
        assert_eq!(
            w.agent.rollback().await,
            Err("no previous good release to roll back to".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_releases_are_pruned_to_keep() {
        let mut w = World::new(&[("1", true), ("2", true), ("3", true), ("4", true)]);
        for v in ["1", "2", "3", "4"] {
            w.put(v);
            assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
        }
        let names: Vec<String> = w
            .agent
            .layout()
            .list()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec!["3", "4"]);
    }
}
