//! The fleet's part of a pass (see [`crate::rollout`] and [`crate::fleet`]): before adopting a
//! version, wait for this instance's turn and hold if enough of the fleet failed it; after the
//! pass, leave what happened in the instance's status object.

use std::time::{Duration, SystemTime};

use super::{Agent, Outcome, Parts};
use crate::events::{emit, Event, Fields};
use crate::fleet::{self, IdentityError, Report, Status};
use crate::rollout;
use crate::state::{Request, State};
use crate::store::{ArtifactStore, StoreError};
use crate::value::Desired;

/// How long writing or listing status objects may take before the pass goes on without it.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long asking IMDS for the instance id may take (the client tries twice).
const IDENTITY_TIMEOUT: Duration = Duration::from_secs(5);
/// A status object that says the same is still rewritten once a day, so that its `at` says the
/// instance is alive (and a lifecycle rule can expire the objects of terminated instances).
const REWRITE_AFTER: Duration = Duration::from_secs(86400);

/// What a pass learnt about this instance's turn in a rollout, for its status object.
#[derive(Debug, Default)]
pub(super) struct Place {
    pub position: Option<f64>,
    pub turn_at: Option<SystemTime>,
}

/// What the status object last written says, to write it again only when that changes.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Written {
    outcome: Status,
    running: Option<String>,
    parameter_version: i64,
    turn_at: Option<SystemTime>,
    /// Whole days since the epoch: a new day writes it again.
    day: u64,
    /// `drover pause`, and how many outcomes were recorded: each change writes it again.
    paused: Option<crate::pause::Pause>,
    recorded: u64,
}

impl<P: Parts> Agent<P> {
    /// This instance's id, when the fleet features need one.
    pub(super) async fn instance_id(&mut self) -> Result<String, IdentityError> {
        let Some(identity) = self.identity.as_mut() else {
            return Err(IdentityError::NotConfigured);
        };
        tokio::time::timeout(IDENTITY_TIMEOUT, identity.instance_id())
            .await
            .unwrap_or(Err(IdentityError::Timeout(IDENTITY_TIMEOUT.as_secs())))
    }

    /// Whether this instance may adopt `desired` now: its turn has come, and fewer instances
    /// than `max_failures` reported failing the request. `Err` is the pass's outcome, already
    /// in the journal. What it learns of the instance's turn goes into `place`.
    pub(super) async fn gate(
        &mut self,
        request: &Request,
        desired: &Desired,
        put_at: Option<SystemTime>,
        place: &mut Place,
    ) -> Result<(), Outcome> {
        let version = desired.version.as_str();
        let fields = Fields {
            version: Some(version),
            parameter_version: Some(request.parameter_version),
            ..Fields::default()
        };
        if let Some(rollout) = &desired.rollout {
            let id = match self.instance_id().await {
                Ok(id) => id,
                Err(e) => {
                    let error = e.to_string();
                    let message = format!("Cannot place this instance in the rollout: {error}");
                    emit(Event::PollFailed, &fields.with_error(&error), &message);
                    return Err(Outcome::Retry);
                }
            };
            let position = rollout::position(&id, &desired.version);
            let Some(put_at) = put_at.or(rollout.start) else {
                // SSM always says when a value was put; an emulator may not.
                let error = "the rollout has no \"start\" and the parameter no LastModifiedDate";
                if self.should_report(request, Event::PollFailed) {
                    let message = format!("Not adopting {version}: {error}");
                    emit(Event::PollFailed, &fields.with_error(error), &message);
                }
                return Err(Outcome::Invalid);
            };
            let turn = rollout.turn(position, put_at);
            place.position = Some(position);
            if SystemTime::now() < turn.at {
                place.turn_at = Some(turn.at);
                if self.should_report(request, Event::RolloutWaiting) {
                    let wave = turn
                        .wave
                        .map(|w| format!(" (wave {w})"))
                        .unwrap_or_default();
                    emit(
                        Event::RolloutWaiting,
                        &Fields {
                            position: Some(position),
                            ..fields
                        },
                        &format!(
                            "Waiting for this instance's turn to adopt {version}: position \
                             {position:.4}{wave}, at {}",
                            crate::rfc3339::format(turn.at)
                        ),
                    );
                }
                return Err(Outcome::AwaitingTurn);
            }
        }
        let Some(prefix) = self.config.fleet.status_prefix.clone() else {
            return Ok(());
        };
        let max = (desired.rollout.as_ref())
            .and_then(|r| r.max_failures)
            .unwrap_or(self.config.fleet.max_failures);
        let failures_prefix = fleet::failures_prefix(&prefix, version, request.parameter_version);
        let bucket = &self.config.artifact.bucket;
        let list = self.store.list_keys(&failures_prefix, max as usize);
        let listed = bounded(bucket, &failures_prefix, list).await;
        match listed {
            Err(e) => {
                // Not knowing is not a go-ahead.
                let error = format!("cannot count the fleet's failures: {e}");
                emit(
                    Event::PollFailed,
                    &fields.with_error(&error),
                    &format!("Not adopting {version} yet: {error}"),
                );
                Err(Outcome::Retry)
            }
            Ok(keys) if keys.len() >= max as usize => {
                if self.should_report(request, Event::RolloutHalted) {
                    let n = keys.len() as u64;
                    emit(
                        Event::RolloutHalted,
                        &Fields {
                            failures: Some(n),
                            position: place.position,
                            ..fields
                        },
                        &format!(
                            "Holding at the running version: {n} instance(s) failed {version} \
                             (max_failures {max}); put the parameter again to retry it"
                        ),
                    );
                }
                Err(Outcome::Halted)
            }
            Ok(_) => Ok(()),
        }
    }

    /// Leaves the pass's outcome in this instance's status object when it changed (or a day has
    /// passed), and a failure object when a deploy of the request failed here: `tried` says the
    /// pass deployed it, and a request skipped as failed before is reported again, in case the
    /// agent stopped, or S3 failed, before its failure was written. Best effort: the pass stands
    /// either way, and the next pass tries again.
    pub(super) async fn report(
        &mut self,
        state: &State,
        request: &Request,
        desired: &Desired,
        place: &Place,
        outcome: Outcome,
        tried: bool,
    ) {
        let Some(prefix) = self.config.fleet.status_prefix.clone() else {
            return;
        };
        let failed_before = (outcome == Outcome::Skipped).then(|| failure_name(state, request));
        let Some(name) = failed_before.or_else(|| outcome.status()) else {
            return;
        };
        let running = self.layout.active().ok().flatten();
        let now = SystemTime::now();
        let remembered = Written {
            outcome: name,
            running: running.clone(),
            parameter_version: request.parameter_version,
            turn_at: place.turn_at,
            day: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / REWRITE_AFTER.as_secs()),
            paused: self.pause.clone(),
            recorded: self.clock.recorded(),
        };
        if self.reported_status.as_ref() == Some(&remembered) {
            return;
        }
        let id = match self.instance_id().await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(target: "drover", event = crate::events::Event::StatusWriteFailed.as_str(), error = %e, "cannot write the status object");
                return;
            }
        };
        let error = state.last_of(request).and_then(|last| last.error.clone());
        let report = Report {
            instance: id.clone(),
            running,
            desired: Some(desired.version.to_string()),
            parameter_version: Some(request.parameter_version),
            outcome: name,
            position: place.position,
            turn_at: place.turn_at.map(crate::rfc3339::format),
            error,
            at: crate::rfc3339::format(now),
            paused: self.pause.clone(),
            recent: self.recent_history(),
        };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        let mut keys = vec![fleet::instance_key(&prefix, &id)];
        if report.is_failure() && (tried || failed_before.is_some()) {
            keys.push(fleet::failure_key(
                &prefix,
                desired.version.as_str(),
                request.parameter_version,
                &id,
            ));
        }
        // The failure first: it is what the rest of the fleet counts.
        for key in keys.into_iter().rev() {
            let put = self.store.put_small(&key, body.clone());
            if let Err(e) = bounded(&self.config.artifact.bucket, &key, put).await {
                tracing::warn!(target: "drover", event = crate::events::Event::StatusWriteFailed.as_str(), key = %key, error = %e, "cannot write the status object");
                return;
            }
        }
        self.reported_status = Some(remembered);
    }
}

/// A call on the status objects, given up after [`STATUS_TIMEOUT`] as a failure naming `key`
/// of `bucket`: the pass goes on without it.
async fn bounded<T>(
    bucket: &str,
    key: &str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STATUS_TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Failed {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                message: format!("no answer within {} s", STATUS_TIMEOUT.as_secs()),
            })
        })
}

/// How a request that this instance remembers as failed ended here, for its status object.
fn failure_name(state: &State, request: &Request) -> Status {
    use crate::state::Verdict;
    match state.last_of(request).map(|last| last.result) {
        Some(Verdict::Reverted) => Status::Reverted,
        Some(Verdict::RevertFailed) => Status::RevertFailed,
        Some(Verdict::Rejected) => Status::Rejected,
        Some(Verdict::Aborted) => Status::Aborted,
        _ => Status::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_status_objects_are_the_failed_outcomes() {
        for outcome in [
            Outcome::Reverted,
            Outcome::Failed,
            Outcome::RevertFailed,
            Outcome::Rejected,
            Outcome::Aborted,
        ] {
            assert!(outcome.status().unwrap().is_failure(), "{outcome:?}");
        }
        for outcome in [Outcome::Deployed, Outcome::Halted, Outcome::AwaitingTurn] {
            assert!(!outcome.status().unwrap().is_failure(), "{outcome:?}");
        }
    }
}
