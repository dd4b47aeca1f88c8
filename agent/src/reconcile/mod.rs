//! The reconcile loop: one pass of SPEC's numbered flow per call, through the small traits of
//! [`crate::source`], [`crate::store`], [`crate::service`] and [`crate::health`].
//!
//! 1. desired version → 2. fetch + verify → 3. unpack → 4. switch → 5. restart → 6. health →
//! 7. commit, or switch back to the previous good release.
//!
//! What to do is decided by [`crate::plan`]; this module performs it and reports each step as a
//! journal event. State changes are computed in memory and saved in one atomic write per step, and
//! a switch in flight is recorded first, so an agent killed at any point finds its way back.

mod deploy;
mod ending;
mod error;
mod fleet_gate;
mod hook_steps;
mod observe;
mod outcome;
mod pause;
mod record;
mod revert;
mod scaling;
mod settings;
mod traffic;

pub use error::{Error, HookUserError};
pub use outcome::{Mode, Outcome};

use crate::balancer::LoadBalancer;
use crate::config::{self, Config};
use crate::environment::Settings;
use crate::events::{emit, Event, Fields};
use crate::fsutil::{IoContext, PathError};
use crate::health::HealthProbe;
use crate::lifecycle::AutoScaling;
use crate::plan::{self, Facts, Step};
use crate::releases::Layout;
use crate::service::{Confinement, ServiceManager};
use crate::source::{DesiredSource, SourceError};
use crate::state::{Request, State, StateError, StateFile, Verdict};
use crate::store::ArtifactStore;
use crate::version::Version;
use crate::webhook::Webhook;

/// The outside world a pass works through: where the desired version comes from, where the
/// artifacts are, the service manager and the health probe. One bundle, so that each file of
/// the loop names it once: `impl<P: Parts> Agent<P>`.
pub trait Parts {
    type Source: DesiredSource;
    type Store: ArtifactStore;
    type Services: ServiceManager;
    type Probe: HealthProbe;
    type Balancer: LoadBalancer;
    type Scaling: AutoScaling;
}

impl<S, A, M, H, B, C> Parts for (S, A, M, H, B, C)
where
    S: DesiredSource,
    A: ArtifactStore,
    M: ServiceManager,
    H: HealthProbe,
    B: LoadBalancer,
    C: AutoScaling,
{
    type Source = S;
    type Store = A;
    type Services = M;
    type Probe = H;
    type Balancer = B;
    type Scaling = C;
}

/// The outside world, as [`Agent::new`] takes it: the parameter, the artifacts, the service
/// manager, and the ones a config may leave out: the health probe (`[health] url`), the load
/// balancer (`[loadbalancer]`) and Auto Scaling (`[autoscaling]`).
pub struct Outside<S, A, M, H, B, C> {
    pub source: S,
    pub store: A,
    pub services: M,
    pub probe: Option<H>,
    pub balancer: Option<B>,
    pub scaling: Option<C>,
}

/// The sections of the config a pass reads. Where the parameter is and how often to poll it,
/// the AWS endpoints and the webhook are the caller's: it builds the parts from them.
pub struct Sections {
    pub artifact: config::Artifact,
    pub release: config::Release,
    pub service: config::Service,
    pub health: config::Health,
    pub agent: config::AgentSection,
    pub hooks: config::Hooks,
    pub environment: Option<config::Environment>,
    pub fleet: config::Fleet,
    pub loadbalancer: Option<config::LoadBalancer>,
    pub autoscaling: Option<config::AutoScaling>,
    pub metrics: config::Metrics,
}

impl From<Config> for Sections {
    fn from(config: Config) -> Self {
        let Config {
            artifact,
            release,
            service,
            health,
            agent,
            hooks,
            environment,
            fleet,
            loadbalancer,
            autoscaling,
            metrics,
            source: _,
            aws: _,
            notify: _,
        } = config;
        Sections {
            artifact,
            release,
            service,
            health,
            agent,
            hooks,
            environment,
            fleet,
            loadbalancer,
            autoscaling,
            metrics,
        }
    }
}

pub struct Agent<P: Parts> {
    config: Sections,
    source: P::Source,
    store: P::Store,
    services: P::Services,
    probe: Option<P::Probe>,
    balancer: Option<P::Balancer>,
    /// Shared with the heartbeats sent while a pass runs.
    scaling: Option<std::rc::Rc<P::Scaling>>,
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
    reported_status: Option<fleet_gate::Written>,
    /// `[fleet] max_in_flight`: the slot held this pass, given back at its end.
    lease: Option<crate::lease::Held>,
    /// `[autoscaling]`: what was learnt of the group and its hooks.
    lifecycle: scaling::Known,
    /// `[metrics]`: what the daemon has done, written after each pass.
    metrics: crate::metrics::Recorder,
    /// The phases of the deploy under way.
    timings: crate::metrics::Timings,
    /// `drover pause`: the pause the last pass found in force.
    pause: Option<crate::pause::Pause>,
    /// `drover history`: when this pass began, and how many outcomes were recorded.
    clock: record::Clock,
}

impl<S, A, M, H, B, C> Agent<(S, A, M, H, B, C)>
where
    S: DesiredSource,
    A: ArtifactStore,
    M: ServiceManager,
    H: HealthProbe,
    B: LoadBalancer,
    C: AutoScaling,
{
    pub fn new(
        config: impl Into<Sections>,
        outside: Outside<S, A, M, H, B, C>,
        mode: Mode,
    ) -> Self {
        let config: Sections = config.into();
        let textfile = (mode == Mode::Daemon)
            .then(|| config.metrics.textfile.clone())
            .flatten();
        let Outside {
            source,
            store,
            services,
            probe,
            balancer,
            scaling,
        } = outside;
        Self {
            layout: Layout::new(&config.release.root),
            state_file: StateFile::new(&config.agent.state_dir),
            config,
            source,
            store,
            services,
            probe,
            balancer,
            scaling: scaling.map(std::rc::Rc::new),
            lifecycle: scaling::Known::default(),
            mode,
            reported: None,
            settings: None,
            reported_environment: None,
            webhook: None,
            identity: None,
            reported_status: None,
            lease: None,
            metrics: crate::metrics::Recorder::new(textfile, std::time::SystemTime::now()),
            timings: crate::metrics::Timings::default(),
            pause: None,
            clock: record::Clock::default(),
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
        self.begin_pass();
        let _lock = match lock_state(&self.config.agent.state_dir) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot lock the state directory");
                return Outcome::Retry;
            }
        };
        let mut state = match self.prepare().await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, "cannot prepare the release root or state");
                return Outcome::Retry;
            }
        };

        // 1. Desired version.
        let read = self.source.read().await;
        self.metrics.polled(observe::poll(&read));
        let parameter = match read {
            Ok(p) => p,
            Err(e) => {
                let error = crate::reach::Fix::explained(&e);
                emit(
                    Event::PollFailed,
                    &Fields {
                        error: Some(&error),
                        ..Fields::default()
                    },
                    &format!("Reading the desired version failed: {error}"),
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
        let desired = crate::value::parse_value(&request.value);
        self.observe_desired(&request, desired.as_ref().ok());
        let desired = match desired {
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
        tracing::debug!(target: "drover", event = crate::events::Event::Trace.as_str(), ?step, version = %desired.version, "decided");
        let mut place = fleet_gate::Place::default();
        let paused = self.held_by_pause(&request, &desired.version, step, active.as_deref());
        let (outcome, tried) = match step {
            _ if paused => (Outcome::Paused, false),
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
        self.give_lease_back().await;
        self.observe_ending(outcome, tried, &desired.version);
        self.report(&state, &request, &desired, &place, outcome, tried)
            .await;
        if tried {
            crate::memory::give_back();
        }
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
    async fn prepare(&mut self) -> Result<State, Error> {
        self.stop_leftover_hooks().await;
        self.layout.ensure()?;
        let (removed, left) = self.layout.clean_staging()?;
        for path in removed {
            tracing::info!(target: "drover", event = crate::events::Event::StagingRemoved.as_str(), path = %path.display(), "removed leftover staging");
        }
        for e in left {
            tracing::warn!(target: "drover", event = crate::events::Event::StagingRemoved.as_str(), error = %e, "cannot remove leftover staging");
        }
        let mut state = match self.state_file.load() {
            Ok(s) => s,
            Err(e) => {
                let aside = self.state_file.path().with_extension("json.corrupt");
                tracing::error!(target: "drover", event = crate::events::Event::StateFailed.as_str(), error = %e, aside = %aside.display(),
                    "state is unreadable; moving it aside and starting afresh");
                std::fs::rename(self.state_file.path(), &aside).at("rename", &aside)?;
                State::default()
            }
        };
        if let Some(pending) = state.take_pending() {
            self.recover(&mut state, &pending).await;
            self.save(&state)?;
        } else if state.environment_pending {
            if self.put_back_environment(&mut state) {
                let _ = self.restart_units(&Fields::default()).await;
            }
            self.save(&state)?;
        }
        self.rejoin_if_left(&mut state).await;
        Ok(state)
    }

    /// A hook an earlier drover was running when it was killed still runs in its scope (systemd
    /// keeps it apart from drover's own cgroup): it belonged to a deploy that is being undone or
    /// tried again, so it is stopped before anything else. Under the state lock, no hook of ours
    /// runs now.
    async fn stop_leftover_hooks(&self) {
        let Ok(scopes) = self.services.scopes(crate::hooks::SCOPES).await else {
            return;
        };
        for scope in scopes {
            tracing::warn!(target: "drover", event = crate::events::Event::HookLeftRunning.as_str(), scope = %scope, "stopping a hook left running by an earlier drover");
            if let Err(e) = self.services.kill_all(&scope).await {
                tracing::error!(target: "drover", event = crate::events::Event::HookLeftRunning.as_str(), scope = %scope, error = %e, "cannot stop the hook left running");
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
            let again = state.last_of(&request).map(|last| last.result);
            state.invalid(request, error);
            let _ = self.save(state);
            if let Some(last) = state
                .last
                .as_ref()
                .filter(|_| again != Some(Verdict::Invalid))
            {
                self.record_history(last);
            }
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
            state.reapplied(request);
            let _ = self.save(state);
        }
        if let Some(outcome) = self.apply_environment(state, version).await {
            return outcome;
        }
        if self.mode == Mode::Daemon {
            return Outcome::InSync;
        }
        match self.health_gate().await {
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

    fn save(&self, state: &State) -> Result<(), StateError> {
        self.state_file.save(state)
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
mod tests;
