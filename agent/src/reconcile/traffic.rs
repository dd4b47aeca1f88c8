//! The instance out of service around a restart, and back in after it (`[loadbalancer]`): the
//! steps around 5 and 6. [`Agent::leave_service`] deregisters it from the target groups it is in
//! and waits for the drain; [`Agent::rejoin_service`] registers it again once the release passed
//! drover's own gate, and waits until the load balancer finds it healthy. Which groups it left
//! is in the state before it leaves them, so that a drover killed in between puts it back
//! ([`Agent::rejoin_if_left`]). Without `[loadbalancer]` each is a no-op.

use std::time::Duration;

use super::{Agent, Error, Parts};
use crate::balancer::{self, Pace, Target};
use crate::events::{emit, Event, Fields};
use crate::state::State;

/// How often to ask `DescribeTargetHealth` while waiting.
const POLL: Duration = Duration::from_secs(1);

/// This instance in its target groups.
struct Membership {
    target: Target,
    groups: Vec<String>,
    pace: Pace,
}

impl<P: Parts> Agent<P> {
    /// This instance as a target of `[loadbalancer]`'s groups; `None` without one.
    async fn membership(&mut self) -> Result<Option<Membership>, Error> {
        let Some(lb) = self.config.loadbalancer.clone() else {
            return Ok(None);
        };
        let id = self.instance_id().await?;
        Ok(Some(Membership {
            target: Target { id, port: lb.port },
            groups: lb.target_groups,
            pace: Pace {
                drain_timeout: lb.drain_timeout,
                healthy_timeout: lb.healthy_timeout,
                poll: POLL,
            },
        }))
    }

    /// Out of every target group the instance is registered in, drained, before a restart.
    /// Nothing to do when it is in none (it left them already, or was never registered).
    pub(super) async fn leave_service(
        &mut self,
        state: &mut State,
        fields: &Fields<'_>,
    ) -> Result<(), Error> {
        let membership = self.membership().await?;
        let (
            Some(Membership {
                target,
                groups,
                pace,
            }),
            Some(lb),
        ) = (membership, self.balancer.as_ref())
        else {
            return Ok(());
        };
        let groups = balancer::registered_in(lb, &groups, &target).await?;
        if groups.is_empty() {
            return Ok(());
        }
        state.leaving_service(&groups);
        self.save(state)?;
        let names = groups.join(" ");
        let fields = Fields {
            target_groups: Some(&names),
            ..*fields
        };
        emit(
            Event::DrainStarted,
            &fields,
            &format!("Deregistered {} from {names}; draining", target.id),
        );
        let drained = balancer::drain(lb, &groups, &target, pace).await?;
        let ms = millis(drained.took);
        let fields = Fields {
            duration_ms: Some(ms),
            ..fields
        };
        let message = match drained.still_draining.as_slice() {
            [] => format!("Drained in {:.1} s", drained.took.as_secs_f64()),
            still => format!(
                "Still draining in {} after {:.1} s; restarting anyway",
                still.join(" "),
                drained.took.as_secs_f64()
            ),
        };
        emit(Event::Drained, &fields, &message);
        Ok(())
    }

    /// Back into the target groups it left, once the release passed drover's gate: `Err` when
    /// the load balancer does not find it healthy, which fails the release as drover's own
    /// health gate would.
    pub(super) async fn rejoin_service(
        &mut self,
        state: &mut State,
        fields: &Fields<'_>,
    ) -> Result<(), Error> {
        if state.out_of_service.is_empty() {
            return Ok(());
        }
        let membership = self.membership().await?;
        let (Some(Membership { target, pace, .. }), Some(lb)) =
            (membership, self.balancer.as_ref())
        else {
            return Ok(());
        };
        let groups = state.out_of_service.clone();
        let names = groups.join(" ");
        let fields = Fields {
            target_groups: Some(&names),
            ..*fields
        };
        let took = balancer::join(lb, &groups, &target, pace).await?;
        state.back_in_service();
        self.save(state)?;
        emit(
            Event::Registered,
            &Fields {
                duration_ms: Some(millis(took)),
                ..fields
            },
            &format!(
                "Registered {} in {names}; healthy after {:.1} s",
                target.id,
                took.as_secs_f64()
            ),
        );
        Ok(())
    }

    /// Groups the instance left and was not put back into (drover was killed in between, or
    /// the switch after the drain failed) get it back: the units run the good release. Best
    /// effort: a failure is logged, and the next pass tries again.
    pub(super) async fn rejoin_if_left(&mut self, state: &mut State) {
        if state.out_of_service.is_empty() {
            return;
        }
        if let Err(e) = self.rejoin_service(state, &Fields::default()).await {
            tracing::error!(target: "drover", error = %e, "cannot put the instance back into its target groups");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
