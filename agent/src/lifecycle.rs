//! Auto Scaling lifecycle hooks (`[autoscaling]`): the transitions, the results and the small
//! [`AutoScaling`] trait (the real one is in `aws/`); `reconcile/scaling.rs` carries them out
//! and decides how a launch hook ends after a pass.
//!
//! The instance learns where Auto Scaling is taking it from IMDS
//! (`autoscaling/target-lifecycle-state`). On its way to `InService`, or into a warm pool
//! (`Warmed:*`), it is held in `Pending:Wait` by the launch hook: drover deploys the desired
//! version first and completes the hook with `CONTINUE` once it runs a healthy release, or
//! `ABANDON` when it has nothing good to run. On its way to `Terminated`, the terminate hook holds
//! it while drover runs the release's `pre-stop` hook and drains it from its target groups.

use std::future::Future;
use std::time::Duration;

/// Where Auto Scaling is taking the instance, as far as drover acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Into service, or into a warm pool (`Warmed:Stopped`, `Warmed:Running`,
    /// `Warmed:Hibernated`): the target state, as IMDS says it.
    Launch(String),
    /// Out, for good.
    Terminate,
}

impl Transition {
    /// The transition of a target lifecycle state; `None` for states no hook of drover's
    /// holds (`Detached`, `Standby`, ...).
    pub fn of(target_state: &str) -> Option<Transition> {
        match target_state {
            "Terminated" | "Warmed:Terminated" => Some(Transition::Terminate),
            "InService" => Some(Transition::Launch(target_state.to_owned())),
            s if s.starts_with("Warmed:") => Some(Transition::Launch(s.to_owned())),
            _ => None,
        }
    }
}

/// `LifecycleActionResult`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Abandon,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Continue => "CONTINUE",
            Action::Abandon => "ABANDON",
        }
    }
}

/// How often to send a heartbeat for a hook whose heartbeat timeout is `timeout`: three a
/// timeout, so that one lost call does not let the hook time out.
pub fn heartbeat_every(timeout: Duration) -> Duration {
    (timeout / 3).max(Duration::from_secs(5))
}

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// IMDS did not answer, or answered what drover cannot use.
    #[error("instance metadata: {0}")]
    Metadata(String),
    /// The Auto Scaling API (the message names the call).
    #[error("{0}")]
    Api(String),
    /// The instance is in no Auto Scaling group (or IMDS and the API do not say which).
    #[error("cannot find this instance's Auto Scaling group: {0}")]
    NoGroup(String),
}

/// The calls of IMDS and the Auto Scaling API drover makes.
pub trait AutoScaling {
    /// IMDS `autoscaling/target-lifecycle-state`; `None` outside Auto Scaling.
    fn target_state(&self) -> impl Future<Output = Result<Option<String>, LifecycleError>>;
    /// The group `instance` is in: the IMDS tag `aws:autoscaling:groupName` when instance tags
    /// are in the metadata, else `DescribeAutoScalingInstances`.
    fn group(&self, instance: &str) -> impl Future<Output = Result<String, LifecycleError>>;
    /// The hook's `HeartbeatTimeout` (`DescribeLifecycleHooks`).
    fn heartbeat_timeout(
        &self,
        group: &str,
        hook: &str,
    ) -> impl Future<Output = Result<Duration, LifecycleError>>;
    /// `CompleteLifecycleAction` by instance id (no token needed).
    fn complete(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
        action: Action,
    ) -> impl Future<Output = Result<(), LifecycleError>>;
    /// `RecordLifecycleActionHeartbeat` by instance id.
    fn heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
    ) -> impl Future<Output = Result<(), LifecycleError>>;
}

/// Without `[autoscaling]`: a part that is never asked.
pub struct NoAutoScaling;

impl AutoScaling for NoAutoScaling {
    async fn target_state(&self) -> Result<Option<String>, LifecycleError> {
        Ok(None)
    }
    async fn group(&self, _: &str) -> Result<String, LifecycleError> {
        Err(LifecycleError::NoGroup("no [autoscaling]".into()))
    }
    async fn heartbeat_timeout(&self, _: &str, _: &str) -> Result<Duration, LifecycleError> {
        Ok(Duration::from_secs(3600))
    }
    async fn complete(&self, _: &str, _: &str, _: &str, _: Action) -> Result<(), LifecycleError> {
        Ok(())
    }
    async fn heartbeat(&self, _: &str, _: &str, _: &str) -> Result<(), LifecycleError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_states_and_transitions() {
        assert_eq!(
            Transition::of("InService"),
            Some(Transition::Launch("InService".into()))
        );
        assert_eq!(
            Transition::of("Warmed:Stopped"),
            Some(Transition::Launch("Warmed:Stopped".into()))
        );
        assert_eq!(Transition::of("Terminated"), Some(Transition::Terminate));
        assert_eq!(
            Transition::of("Warmed:Terminated"),
            Some(Transition::Terminate)
        );
        assert_eq!(Transition::of("Detached"), None);
    }

    #[test]
    fn heartbeats_come_three_times_a_timeout() {
        assert_eq!(
            heartbeat_every(Duration::from_secs(300)),
            Duration::from_secs(100)
        );
        assert_eq!(
            heartbeat_every(Duration::from_secs(6)),
            Duration::from_secs(5)
        );
    }
}
