//! The instance's load-balancer target groups around a restart (`[loadbalancer]`): out of each
//! group before the restart, drained, and back in after the health gate, healthy. No fixed
//! sleeps: [`drain`] polls `DescribeTargetHealth` until the load balancer has finished draining
//! (the target is `unused`), and [`join`] until it says `healthy`, so the time added is what the
//! load balancer needs. The real client is in `aws.rs`; this module decides, through the small
//! [`LoadBalancer`] trait.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// This instance in a target group: its id, and the port when the config names one (otherwise
/// the group's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub id: String,
    pub port: Option<u16>,
}

/// A target's state in a group, as `DescribeTargetHealth` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Registered; the first health checks are running.
    Initial,
    Healthy,
    Unhealthy,
    /// Not registered (or deregistration finished).
    Unused,
    /// Deregistered; requests in flight are finishing.
    Draining,
    /// Registered to a group whose health checks are off.
    Unavailable,
    /// A state this build does not know.
    Other,
}

impl TargetState {
    pub fn parse(state: &str) -> TargetState {
        match state {
            "initial" => TargetState::Initial,
            "healthy" => TargetState::Healthy,
            "unhealthy" | "unhealthy.draining" => TargetState::Unhealthy,
            "unused" => TargetState::Unused,
            "draining" => TargetState::Draining,
            "unavailable" => TargetState::Unavailable,
            _ => TargetState::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Unused => "unused",
            TargetState::Draining => "draining",
            TargetState::Unavailable => "unavailable",
            TargetState::Other => "other",
        }
    }

    /// Whether the load balancer may send the target new requests.
    fn serves(self) -> bool {
        matches!(self, TargetState::Healthy | TargetState::Unavailable)
    }
}

/// What drover needs to know of a target group to pace itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// `deregistration_delay.timeout_seconds`: the longest a drain takes.
    pub deregistration_delay: Duration,
    /// `HealthCheckIntervalSeconds` and `HealthyThresholdCount`: how long a new target takes
    /// to be found healthy.
    pub health_interval: Duration,
    pub healthy_threshold: u32,
}

impl Group {
    /// How long a registered target may take to become healthy: the checks it must pass, plus
    /// two intervals for the first check to start and for the answer to reach the API.
    pub fn healthy_within(&self) -> Duration {
        self.health_interval * (self.healthy_threshold + 2)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    /// A call failed (the message says which, and why).
    #[error("target group {group}: {message}")]
    Api { group: String, message: String },
    /// After registration, the load balancer did not find the target healthy in time, or found
    /// it unhealthy.
    #[error("target group {group}: {target} is {state} after {seconds} s, not healthy")]
    NotHealthy {
        group: String,
        target: String,
        state: &'static str,
        seconds: u64,
    },
}

/// The calls of the Elastic Load Balancing API drover makes.
pub trait LoadBalancer {
    fn describe(&self, group: &str) -> impl Future<Output = Result<Group, BalancerError>>;
    fn state(
        &self,
        group: &str,
        target: &Target,
    ) -> impl Future<Output = Result<TargetState, BalancerError>>;
    fn deregister(
        &self,
        group: &str,
        target: &Target,
    ) -> impl Future<Output = Result<(), BalancerError>>;
    fn register(
        &self,
        group: &str,
        target: &Target,
    ) -> impl Future<Output = Result<(), BalancerError>>;
}

impl<L: LoadBalancer> LoadBalancer for std::rc::Rc<L> {
    async fn describe(&self, group: &str) -> Result<Group, BalancerError> {
        (**self).describe(group).await
    }
    async fn state(&self, group: &str, target: &Target) -> Result<TargetState, BalancerError> {
        (**self).state(group, target).await
    }
    async fn deregister(&self, group: &str, target: &Target) -> Result<(), BalancerError> {
        (**self).deregister(group, target).await
    }
    async fn register(&self, group: &str, target: &Target) -> Result<(), BalancerError> {
        (**self).register(group, target).await
    }
}

/// How long to wait, and how often to ask.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// `[loadbalancer] drain_timeout`; `None`: the group's deregistration delay.
    pub drain_timeout: Option<Duration>,
    /// `[loadbalancer] healthy_timeout`; `None`: [`Group::healthy_within`].
    pub healthy_timeout: Option<Duration>,
}

/// How long to wait before asking again, `elapsed` into a wait: often at first, when a short
/// drain or a quick health check is about to end, then less often, so that a five-minute
/// deregistration delay costs a few dozen calls, not a thousand.
pub fn poll_after(elapsed: Duration) -> Duration {
    match elapsed.as_secs() {
        0..5 => Duration::from_millis(250),
        5..60 => Duration::from_secs(1),
        _ => Duration::from_secs(5),
    }
}

/// What [`drain`] did.
#[derive(Debug, PartialEq, Eq)]
pub struct Drained {
    pub took: Duration,
    /// Groups still draining when the cap ran out: the restart went ahead anyway.
    pub still_draining: Vec<String>,
}

/// The groups of `groups` that `target` is registered in (in any state but `unused`): the ones
/// to take it out of, and to put it back into. A group it is not in (a new instance, before
/// Auto Scaling registers it; a warm pool's) is left alone.
pub async fn registered_in<L: LoadBalancer>(
    lb: &L,
    groups: &[String],
    target: &Target,
) -> Result<Vec<String>, BalancerError> {
    let mut registered = Vec::new();
    for group in groups {
        if lb.state(group, target).await? != TargetState::Unused {
            registered.push(group.clone());
        }
    }
    Ok(registered)
}

/// Deregisters `target` from each of `groups`, then waits until each has drained, or the cap
/// runs out (the load balancer ends a drain at its deregistration delay anyway).
pub async fn drain<L: LoadBalancer>(
    lb: &L,
    groups: &[String],
    target: &Target,
    pace: Pace,
) -> Result<Drained, BalancerError> {
    let started = Instant::now();
    let mut cap = Duration::ZERO;
    for group in groups {
        let delay = match pace.drain_timeout {
            Some(timeout) => timeout,
            None => lb.describe(group).await?.deregistration_delay,
        };
        cap = cap.max(delay);
        lb.deregister(group, target).await?;
    }
    let deadline = started + cap;
    let mut draining = groups.to_vec();
    while !draining.is_empty() {
        let mut still = Vec::new();
        for group in draining {
            if lb.state(&group, target).await? != TargetState::Unused {
                still.push(group);
            }
        }
        draining = still;
        if draining.is_empty() || Instant::now() >= deadline {
            break;
        }
        let poll = poll_after(started.elapsed());
        tokio::time::sleep(poll.min(deadline - Instant::now())).await;
    }
    Ok(Drained {
        took: started.elapsed(),
        still_draining: draining,
    })
}

/// Registers `target` in each of `groups` and waits until every one says `healthy`. `unhealthy`
/// ends the wait at once: the load balancer has seen its threshold of failed checks in a row.
pub async fn join<L: LoadBalancer>(
    lb: &L,
    groups: &[String],
    target: &Target,
    pace: Pace,
) -> Result<Duration, BalancerError> {
    let started = Instant::now();
    let mut caps = Vec::with_capacity(groups.len());
    for group in groups {
        let cap = match pace.healthy_timeout {
            Some(timeout) => timeout,
            None => lb.describe(group).await?.healthy_within(),
        };
        lb.register(group, target).await?;
        caps.push((group.as_str(), started + cap));
    }
    while !caps.is_empty() {
        let mut waiting = Vec::new();
        for (group, deadline) in caps {
            let state = lb.state(group, target).await?;
            if state.serves() {
                continue;
            }
            if state == TargetState::Unhealthy || Instant::now() >= deadline {
                return Err(BalancerError::NotHealthy {
                    group: group.to_owned(),
                    target: target.id.clone(),
                    state: state.as_str(),
                    seconds: started.elapsed().as_secs(),
                });
            }
            waiting.push((group, deadline));
        }
        caps = waiting;
        if !caps.is_empty() {
            tokio::time::sleep(poll_after(started.elapsed())).await;
        }
    }
    Ok(started.elapsed())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A load balancer in memory: a target drains for `drain`, is `initial` for `settle` after
    /// registration, then healthy, unless the registration was one of the next `sick` ones.
    #[derive(Default)]
    pub(crate) struct MemBalancer {
        pub drain: Duration,
        pub settle: Duration,
        pub sick: std::cell::Cell<u32>,
        /// Group → (registered?, since, found unhealthy?).
        pub targets: RefCell<HashMap<String, (bool, Instant, bool)>>,
        pub calls: RefCell<Vec<String>>,
        /// A group whose `DeregisterTargets` is denied.
        pub denied: RefCell<Option<String>>,
    }

    impl MemBalancer {
        pub(crate) fn registered_in(groups: &[&str]) -> MemBalancer {
            let lb = MemBalancer {
                drain: Duration::from_secs(5),
                settle: Duration::from_secs(10),
                ..MemBalancer::default()
            };
            let long_ago = Instant::now() - Duration::from_secs(3600);
            for group in groups {
                lb.targets
                    .borrow_mut()
                    .insert(group.to_string(), (true, long_ago, false));
            }
            lb
        }
    }

    impl LoadBalancer for MemBalancer {
        async fn describe(&self, _: &str) -> Result<Group, BalancerError> {
            Ok(Group {
                deregistration_delay: Duration::from_secs(30),
                health_interval: Duration::from_secs(5),
                healthy_threshold: 3,
            })
        }
        async fn state(&self, group: &str, _: &Target) -> Result<TargetState, BalancerError> {
            let targets = self.targets.borrow();
            Ok(match targets.get(group) {
                None => TargetState::Unused,
                Some((false, since, _)) if since.elapsed() < self.drain => TargetState::Draining,
                Some((false, ..)) => TargetState::Unused,
                Some((true, since, _)) if since.elapsed() < self.settle => TargetState::Initial,
                Some((true, _, true)) => TargetState::Unhealthy,
                Some((true, _, false)) => TargetState::Healthy,
            })
        }
        async fn deregister(&self, group: &str, _: &Target) -> Result<(), BalancerError> {
            if self.denied.borrow().as_deref() == Some(group) {
                return Err(BalancerError::Api {
                    group: group.to_owned(),
                    message: "DeregisterTargets: AccessDenied (HTTP 403)".into(),
                });
            }
            self.calls.borrow_mut().push(format!("deregister {group}"));
            self.targets
                .borrow_mut()
                .insert(group.to_owned(), (false, Instant::now(), false));
            Ok(())
        }
        async fn register(&self, group: &str, _: &Target) -> Result<(), BalancerError> {
            self.calls.borrow_mut().push(format!("register {group}"));
            let sick = self.sick.get() > 0;
            self.sick.set(self.sick.get().saturating_sub(1));
            self.targets
                .borrow_mut()
                .insert(group.to_owned(), (true, Instant::now(), sick));
            Ok(())
        }
    }

    fn target() -> Target {
        Target {
            id: "i-0123456789abcdef0".into(),
            port: Some(8080),
        }
    }

    const PACE: Pace = Pace {
        drain_timeout: None,
        healthy_timeout: None,
    };
    /// The longest a wait can overshoot, the drains and checks of these tests being over 5 s.
    const POLL: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn draining_waits_for_the_drain_and_not_a_second_more_than_a_poll() {
        let lb = MemBalancer::registered_in(&["a", "b"]);
        let groups = ["a".to_string(), "b".to_string(), "c".to_string()];
        let groups = registered_in(&lb, &groups, &target()).await.unwrap();
        assert_eq!(groups, ["a", "b"], "not registered in c: left alone");
        let drained = drain(&lb, &groups, &target(), PACE).await.unwrap();
        assert!(drained.still_draining.is_empty());
        let took = drained.took;
        assert!(took >= lb.drain && took <= lb.drain + POLL, "{took:?}");
        assert_eq!(*lb.calls.borrow(), ["deregister a", "deregister b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_longer_than_the_cap_lets_the_restart_go_ahead() {
        let lb = MemBalancer::registered_in(&["a"]);
        let pace = Pace {
            drain_timeout: Some(Duration::from_secs(2)),
            ..PACE
        };
        let drained = drain(&lb, &["a".to_string()], &target(), pace)
            .await
            .unwrap();
        assert_eq!(drained.still_draining, ["a"]);
        assert_eq!(drained.took, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn joining_waits_until_healthy() {
        let lb = MemBalancer::registered_in(&[]);
        let took = join(&lb, &["a".to_string()], &target(), PACE)
            .await
            .unwrap();
        assert!(took >= lb.settle && took <= lb.settle + POLL, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_found_unhealthy_or_never_healthy_fails_the_join() {
        let lb = MemBalancer {
            sick: 1.into(),
            ..MemBalancer::registered_in(&[])
        };
        let e = join(&lb, &["a".to_string()], &target(), PACE)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is unhealthy after 10 s"), "{e}");
        let lb = MemBalancer {
            settle: Duration::from_secs(3600),
            ..MemBalancer::registered_in(&[])
        };
        let e = join(&lb, &["a".to_string()], &target(), PACE)
            .await
            .unwrap_err();
        // 5 s × (3 + 2), the group's own pace.
        assert!(e.to_string().contains("is initial after 25 s"), "{e}");
    }
}
