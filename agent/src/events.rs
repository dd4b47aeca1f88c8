//! The journal events operators and scripts rely on (SPEC: "What operators see").
//!
//! Each event is one journal entry with `EVENT` and the fields that apply (`VERSION`,
//! `PREVIOUS_VERSION`, `PARAMETER_VERSION`, `UNIT`, `SHA256`, `ERROR`; `HOOK` for hooks and
//! `VARIABLES` for the app's environment; `POSITION` and `FAILURES` for rollouts; `TARGET_GROUPS`,
//! `DURATION_MS` and `SLOTS` for the load balancer and the fleet's leases; `LIFECYCLE_HOOK` and
//! `RESULT` for Auto Scaling; `UNTIL` and `REASON` for `drover pause`). Fields that do not apply
//! are left out rather than written empty. Errors log at `err`, reverts, failed notices and
//! deploys held by a pause at `warning`, the rest at `info`.
//! The logging set-up decides whether they go to journald or to stderr.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    PollFailed,
    DeployStarted,
    ArtifactVerified,
    ArtifactRejected,
    Switched,
    UnitRestarted,
    HealthPassed,
    HealthFailed,
    Deployed,
    Reverted,
    RevertFailed,
    SkippedFailedVersion,
    /// A line a release's hook printed.
    HookOutput,
    HookPassed,
    HookFailed,
    /// A pre-activate hook failed: nothing was switched.
    DeployAborted,
    /// The parameters under `[environment] path` changed; the units are restarted for them.
    EnvironmentChanged,
    /// Those changes passed the health gate.
    EnvironmentApplied,
    /// Settings whose names the dynamic loader, libc or a shell act on were left out.
    VariablesRefused,
    NotifyFailed,
    /// A rollout is under way and this instance's turn has not come yet.
    RolloutWaiting,
    /// Enough instances reported failing this request: this one holds instead of adopting it.
    RolloutHalted,
    /// `[loadbalancer]`: the instance was deregistered from its target groups before a restart.
    DrainStarted,
    /// The load balancer finished draining it (or the cap ran out), `DURATION_MS` after.
    Drained,
    /// It is registered again and the load balancer finds it healthy, `DURATION_MS` after.
    Registered,
    /// `[fleet] max_in_flight`: every one of the `SLOTS` is held by another instance.
    LeaseWaiting,
    /// `[autoscaling]`: drover completed the `LIFECYCLE_HOOK` with `RESULT`.
    LifecycleCompleted,
    /// A call about the lifecycle hook failed (`ERROR`); it is tried again.
    LifecycleFailed,
    /// The artifact is being downloaded: its size, and in how many parts over how many connections.
    DownloadStarted,
    /// A ranged GET of a part failed and is tried again.
    PartRetried,
    /// The release is unpacked (and given to `[release] owner`).
    Unpacked,
    /// An old release was removed from disk (or could not be, with `ERROR`).
    ReleasePruned,
    /// A leftover of an interrupted fetch was removed from `.staging/` (or could not be).
    StagingRemoved,
    /// `current` could not be switched; it is unchanged.
    SwitchFailed,
    /// The state directory could not be locked, read or written (an unreadable file is set aside).
    StateFailed,
    /// An interrupted environment change was undone: the last good file is back.
    EnvironmentRestored,
    /// The app's environment file could not be written, kept or put back.
    EnvironmentFailed,
    /// No systemd to run a hook in a scope of its own: only its process group is killed.
    HookUnscoped,
    /// A hook an earlier drover left running is being stopped.
    HookLeftRunning,
    /// `[fleet]`: this instance's status object could not be written.
    StatusWriteFailed,
    /// `[fleet] max_in_flight`: a slot to leave service was taken.
    LeaseTaken,
    /// That slot was given back (or, with `ERROR`, left to expire).
    LeaseReleased,
    /// That slot could not be renewed, or another instance took it after it expired.
    LeaseLost,
    /// `[loadbalancer]`: the instance could not be put back into its target groups.
    RegisterFailed,
    /// `[autoscaling]`: a lifecycle hook's timeout was extended while a deploy runs.
    LifecycleHeartbeat,
    /// Detail shown with `--verbose` only.
    Trace,
    /// The command stopped with an error (`ERROR`): a config it cannot use, say.
    StartFailed,
    /// `[metrics] textfile` could not be written (`ERROR`): said once, until a write works again.
    MetricsFailed,
    /// `drover pause` holds the instance: the request asks for a version it does not deploy
    /// (`UNTIL`, `REASON`). Once per request.
    DeployPaused,
    /// The pause this agent saw ended (`drover resume`, or its `UNTIL` passed).
    DeployResumed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::PollFailed => "poll_failed",
            Event::DeployStarted => "deploy_started",
            Event::ArtifactVerified => "artifact_verified",
            Event::ArtifactRejected => "artifact_rejected",
            Event::Switched => "switched",
            Event::UnitRestarted => "unit_restarted",
            Event::HealthPassed => "health_passed",
            Event::HealthFailed => "health_failed",
            Event::Deployed => "deployed",
            Event::Reverted => "reverted",
            Event::RevertFailed => "revert_failed",
            Event::SkippedFailedVersion => "skipped_failed_version",
            Event::HookOutput => "hook_output",
            Event::HookPassed => "hook_passed",
            Event::HookFailed => "hook_failed",
            Event::DeployAborted => "deploy_aborted",
            Event::EnvironmentChanged => "environment_changed",
            Event::EnvironmentApplied => "environment_applied",
            Event::VariablesRefused => "variables_refused",
            Event::NotifyFailed => "notify_failed",
            Event::RolloutWaiting => "rollout_waiting",
            Event::RolloutHalted => "rollout_halted",
            Event::DrainStarted => "drain_started",
            Event::Drained => "drained",
            Event::Registered => "registered",
            Event::LeaseWaiting => "lease_waiting",
            Event::LifecycleCompleted => "lifecycle_completed",
            Event::LifecycleFailed => "lifecycle_failed",
            Event::DownloadStarted => "download_started",
            Event::PartRetried => "part_retried",
            Event::Unpacked => "unpacked",
            Event::ReleasePruned => "release_pruned",
            Event::StagingRemoved => "staging_removed",
            Event::SwitchFailed => "switch_failed",
            Event::StateFailed => "state_failed",
            Event::EnvironmentRestored => "environment_restored",
            Event::EnvironmentFailed => "environment_failed",
            Event::HookUnscoped => "hook_unscoped",
            Event::HookLeftRunning => "hook_left_running",
            Event::StatusWriteFailed => "status_write_failed",
            Event::LeaseTaken => "lease_taken",
            Event::LeaseReleased => "lease_released",
            Event::LeaseLost => "lease_lost",
            Event::RegisterFailed => "register_failed",
            Event::LifecycleHeartbeat => "lifecycle_heartbeat",
            Event::Trace => "trace",
            Event::StartFailed => "start_failed",
            Event::MetricsFailed => "metrics_failed",
            Event::DeployPaused => "deploy_paused",
            Event::DeployResumed => "deploy_resumed",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Event::PollFailed
            | Event::ArtifactRejected
            | Event::HealthFailed
            | Event::RevertFailed
            | Event::HookFailed
            | Event::DeployAborted
            | Event::SwitchFailed
            | Event::StateFailed
            | Event::EnvironmentFailed
            | Event::RegisterFailed
            | Event::StartFailed => Severity::Error,
            Event::Reverted
            | Event::NotifyFailed
            | Event::RolloutHalted
            | Event::VariablesRefused
            | Event::LifecycleFailed
            | Event::EnvironmentRestored
            | Event::HookUnscoped
            | Event::StatusWriteFailed
            | Event::LeaseLost
            | Event::MetricsFailed
            | Event::DeployPaused => Severity::Warning,
            _ => Severity::Info,
        }
    }
}

/// The fields of one event; `None` fields are not written.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fields<'a> {
    pub version: Option<&'a str>,
    pub previous_version: Option<&'a str>,
    pub parameter_version: Option<i64>,
    pub unit: Option<&'a str>,
    pub sha256: Option<&'a str>,
    pub error: Option<&'a str>,
    /// `HOOK`: which hook, for its events and output.
    pub hook: Option<&'a str>,
    /// `VARIABLES`: names (never values) of environment variables that changed or were refused.
    pub variables: Option<&'a str>,
    /// `POSITION`: this instance's place in a rollout, in [0, 1).
    pub position: Option<f64>,
    /// `FAILURES`: how many instances reported failing the request.
    pub failures: Option<u64>,
    /// `TARGET_GROUPS`: the load balancer's target groups a step was about, space-separated.
    pub target_groups: Option<&'a str>,
    /// `DURATION_MS`: how long a wait took.
    pub duration_ms: Option<u64>,
    /// `SLOTS`: how many instances may be out of service at once.
    pub slots: Option<u32>,
    /// `LIFECYCLE_HOOK` and `RESULT` (`CONTINUE`, `ABANDON`): an Auto Scaling lifecycle hook.
    pub lifecycle_hook: Option<&'a str>,
    pub result: Option<&'a str>,
    /// `UNTIL` and `REASON`: when a pause lapses (RFC 3339) and why it was asked for.
    pub until: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl<'a> Fields<'a> {
    pub fn with_error(self, error: &'a str) -> Self {
        Fields {
            error: Some(error),
            ..self
        }
    }
}

macro_rules! event_at {
    ($level:expr, $event:expr, $f:expr, $message:expr) => {
        tracing::event!(
            target: "drover",
            $level,
            event = $event.as_str(),
            version = $f.version,
            previous_version = $f.previous_version,
            parameter_version = $f.parameter_version,
            unit = $f.unit,
            sha256 = $f.sha256,
            error = $f.error,
            hook = $f.hook,
            variables = $f.variables,
            position = $f.position,
            failures = $f.failures,
            target_groups = $f.target_groups,
            duration_ms = $f.duration_ms,
            slots = $f.slots,
            lifecycle_hook = $f.lifecycle_hook,
            result = $f.result,
            until = $f.until,
            reason = $f.reason,
            "{}",
            $message
        )
    };
}

/// Writes one event. `message` is the human line shown by a plain `journalctl -u drover`.
pub fn emit(event: Event, fields: &Fields<'_>, message: &str) {
    match event.severity() {
        Severity::Error => event_at!(tracing::Level::ERROR, event, fields, message),
        Severity::Warning => event_at!(tracing::Level::WARN, event, fields, message),
        Severity::Info => event_at!(tracing::Level::INFO, event, fields, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_the_spec() {
        let all = [
            Event::PollFailed,
            Event::DeployStarted,
            Event::ArtifactVerified,
            Event::ArtifactRejected,
            Event::Switched,
            Event::UnitRestarted,
            Event::HealthPassed,
            Event::HealthFailed,
            Event::Deployed,
            Event::Reverted,
            Event::RevertFailed,
            Event::SkippedFailedVersion,
        ];
        let names: Vec<_> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            names.join(" "),
            "poll_failed deploy_started artifact_verified artifact_rejected switched \
             unit_restarted health_passed health_failed deployed reverted revert_failed \
             skipped_failed_version"
        );
        assert_eq!(Event::Reverted.severity(), Severity::Warning);
        assert_eq!(Event::RevertFailed.severity(), Severity::Error);
        assert_eq!(Event::Deployed.severity(), Severity::Info);
    }
}
