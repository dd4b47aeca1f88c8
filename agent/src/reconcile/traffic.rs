//! The instance out of service around a restart, and back in after it: the steps around 5 and
//! 6. [`Agent::take_lease`] waits for one of `[fleet] max_in_flight`'s slots (`lease.rs`), held
//! until the pass ends ([`Agent::give_lease_back`]). With `[loadbalancer]`,
//! [`Agent::leave_service`] deregisters it from the target groups it is in
//! and waits for the drain; [`Agent::rejoin_service`] registers it again once the release passed
//! drover's own gate, and waits until the load balancer finds it healthy. Which groups it left
//! is in the state before it leaves them, so that a drover killed in between puts it back
//! ([`Agent::rejoin_if_left`]). Without `[loadbalancer]` each is a no-op.

use std::time::{Duration, SystemTime};

use super::{Agent, Error, Outcome, Parts};
use crate::balancer::{self, Pace, Target};
use crate::events::{emit, Event, Fields};
use crate::lease::{self, Lease, MaxInFlight};
use crate::state::{Request, State};
use crate::store::ArtifactStore;

/// How long a pass waits for a lease slot before it ends as waiting; the next pass reads the
/// parameter again and tries again.
const LEASE_WAIT: Duration = Duration::from_secs(60);
/// How often to look for a free slot meanwhile.
const LEASE_POLL: Duration = Duration::from_secs(2);
/// The most status objects counted for a fleet's size (`max_in_flight` as a share).
const FLEET_COUNT: usize = 10_000;

/// This instance in its target groups.
struct Membership {
    target: Target,
    groups: Vec<String>,
    pace: Pace,
}

impl<P: Parts> Agent<P> {
    /// One of `[fleet] max_in_flight`'s slots for this pass, before anything leaves service.
    /// `Err` is the pass's outcome when none came free in time (waiting) or the bucket could
    /// not be asked (retry), already in the journal.
    pub(super) async fn take_lease(
        &mut self,
        request: &Request,
        fields: &Fields<'_>,
    ) -> Result<(), Outcome> {
        if self.lifecycle.launching {
            // Not in service yet: nothing to take out of it.
            return Ok(());
        }
        let fleet = &self.config.fleet;
        let (Some(max), Some(prefix), None) = (
            fleet.max_in_flight,
            fleet.status_prefix.clone(),
            &self.lease,
        ) else {
            return Ok(());
        };
        let ttl = fleet.lease_ttl;
        let failed = |what: &str, error: String| {
            emit(
                Event::PollFailed,
                &fields.with_error(&error),
                &format!("{what} failed, will retry: {error}"),
            );
            Err(Outcome::Retry)
        };
        let instance = match self.instance_id().await {
            Ok(id) => id,
            Err(e) => return failed("Finding this instance's id for a lease", e.to_string()),
        };
        let slots = match max {
            MaxInFlight::Count(n) => n,
            MaxInFlight::Fraction(_) => {
                let instances = crate::fleet::instances_prefix(&prefix);
                match self.store.list_keys(&instances, FLEET_COUNT).await {
                    Ok(keys) => max.slots(keys.len()),
                    Err(e) => return failed("Counting the fleet", e.to_string()),
                }
            }
        };
        let leases = crate::fleet::leases_prefix(&prefix);
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        loop {
            let now = SystemTime::now();
            let lease = Lease {
                instance: instance.clone(),
                version: fields.version.map(str::to_owned),
                expires: lease::expiry(now, ttl),
                released: false,
            };
            match lease::take(&self.store, &leases, slots, lease, now).await {
                Ok(Some(held)) => {
                    tracing::info!(target: "drover", event = crate::events::Event::LeaseTaken.as_str(), key = %held.key, "took a lease slot");
                    self.lease = Some(held);
                    return Ok(());
                }
                Ok(None) if self.should_report(request, Event::LeaseWaiting) => emit(
                    Event::LeaseWaiting,
                    &Fields {
                        slots: Some(slots),
                        ..*fields
                    },
                    &format!(
                        "All {slots} lease slots are held by other instances; waiting for one"
                    ),
                ),
                Ok(None) => {}
                Err(e) => return failed("Taking a lease slot", e.to_string()),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Outcome::AwaitingSlot);
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Gives the slot held back, at the end of the pass; it expires by itself if this fails.
    pub(super) async fn give_lease_back(&mut self) {
        if let Some(held) = self.lease.take() {
            let key = held.key.clone();
            match lease::release(&self.store, held).await {
                Ok(()) => {
                    tracing::info!(target: "drover", event = crate::events::Event::LeaseReleased.as_str(), key = %key, "gave the lease slot back")
                }
                Err(e) => {
                    tracing::warn!(target: "drover", event = crate::events::Event::LeaseReleased.as_str(), error = %e, key = %key, "cannot give the lease slot back; it expires by itself")
                }
            }
        }
    }

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
        self.leave_groups(Some(state), fields).await
    }

    /// Out of its target groups for good (scale-in): the groups are not recorded, so nothing
    /// puts the instance back.
    pub(super) async fn leave_for_good(&mut self, fields: &Fields<'_>) -> Result<(), Error> {
        self.leave_groups(None, fields).await
    }

    /// Deregisters the instance from the groups it is in and waits for the drain; with a
    /// `state`, the groups are recorded in it first, to be rejoined.
    async fn leave_groups(
        &mut self,
        state: Option<&mut State>,
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
        let returning = state.is_some();
        if let Some(state) = state {
            state.leaving_service(&groups);
            self.save(state)?;
        }
        renew(
            &self.store,
            self.lease.as_mut(),
            self.config.fleet.lease_ttl,
        )
        .await;
        let names = groups.join(" ");
        let fields = Fields {
            target_groups: Some(&names),
            ..*fields
        };
        let why = if returning { "" } else { " for scale-in" };
        emit(
            Event::DrainStarted,
            &fields,
            &format!("Deregistered {} from {names}{why}; draining", target.id),
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
                "Still draining in {} after {:.1} s; going on anyway",
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
        renew(
            &self.store,
            self.lease.as_mut(),
            self.config.fleet.lease_ttl,
        )
        .await;
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
        if let Err(e) = self.rejoin_service(state, &Fields::default()).await {
            tracing::error!(target: "drover", event = crate::events::Event::RegisterFailed.as_str(), error = %e, "cannot put the instance back into its target groups");
        }
    }
}

/// Extends the slot held, if any (before each wait on the load balancer), so that a slow drain
/// does not let it expire under this instance.
async fn renew<S: ArtifactStore>(store: &S, held: Option<&mut lease::Held>, ttl: Duration) {
    let Some(held) = held else {
        return;
    };
    let expires = lease::expiry(SystemTime::now(), ttl);
    match lease::renew(store, held, expires).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::error!(target: "drover", event = crate::events::Event::LeaseLost.as_str(), key = %held.key, "the lease slot expired and another instance took it")
        }
        Err(e) => {
            tracing::warn!(target: "drover", event = crate::events::Event::LeaseLost.as_str(), error = %e, "cannot renew the lease slot")
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
