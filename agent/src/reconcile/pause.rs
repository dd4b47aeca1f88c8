//! `drover pause` in a pass ([`crate::pause`]): after the parameter is read (polls go on) and
//! after a switch left in flight was undone (that is recovery, not a deploy), a pass that finds
//! a pause in force does nothing else. A request for a version that would be deployed is
//! reported once (`deploy_paused`); the end of the pause is reported by the agent that saw it
//! (`deploy_resumed`).

use std::time::SystemTime;

use super::{Agent, Mode, Parts};
use crate::events::{emit, Event, Fields};
use crate::pause::{Pause, PauseFile};
use crate::plan::Step;
use crate::state::Request;
use crate::version::Version;

impl<P: Parts> Agent<P> {
    /// Whether a pause holds this pass, which would take `step` towards `desired` (running
    /// `active`). Remembers the pause for the status object.
    pub(super) fn held_by_pause(
        &mut self,
        request: &Request,
        desired: &Version,
        step: Step,
        active: Option<&str>,
    ) -> bool {
        let now = SystemTime::now();
        let found = PauseFile::new(&self.config.agent.state_dir).in_force(now);
        let before = std::mem::replace(&mut self.pause, found.clone());
        let Some(pause) = found else {
            if let Some(ended) = before {
                self.resumed(&ended, now);
            }
            return false;
        };
        let fields = Fields {
            version: Some(desired.as_str()),
            previous_version: active,
            parameter_version: Some(request.parameter_version),
            until: pause.until.as_deref(),
            reason: pause.reason.as_deref(),
            ..Fields::default()
        };
        let holds_a_deploy = matches!(step, Step::Switch | Step::Fetch);
        if holds_a_deploy && self.should_report(request, Event::DeployPaused) {
            let running = active
                .map(|a| format!(", staying on {a}"))
                .unwrap_or_default();
            emit(
                Event::DeployPaused,
                &fields,
                &format!(
                    "Not deploying {desired}: paused {}{running}",
                    pause.describe().escape_debug()
                ),
            );
        } else if !holds_a_deploy && self.mode == Mode::Once {
            tracing::warn!(target: "drover", "paused {}; drover once fails while it holds",
                pause.describe().escape_debug());
        }
        true
    }

    /// The pause seen by the last pass is gone: lifted, or lapsed.
    fn resumed(&mut self, ended: &Pause, now: SystemTime) {
        // A later pause reports the same request again.
        if (self.reported.as_ref()).is_some_and(|(_, event)| *event == Event::DeployPaused) {
            self.reported = None;
        }
        let why = match &ended.until {
            Some(until) if !ended.in_force(now) => format!("the pause until {until} lapsed"),
            _ => "the pause was lifted (drover resume)".to_owned(),
        };
        emit(
            Event::DeployResumed,
            &Fields {
                until: ended.until.as_deref(),
                reason: ended.reason.as_deref(),
                ..Fields::default()
            },
            &format!("Deploys resume: {why}"),
        );
    }
}
