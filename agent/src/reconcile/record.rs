//! `drover history`'s side of a pass: each ending (and each invalid request reported) is added
//! to `{state_dir}/history.jsonl` with when its pass began and how long it took; the status
//! object carries the last few ([`crate::history`]).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

use super::{Agent, Parts};
use crate::history::{Entry, HistoryFile};
use crate::state::Record;

/// How many recorded outcomes a status object carries, and how long their errors may be.
const RECENT_IN_STATUS: usize = 5;
const STATUS_ERROR: usize = 300;

/// When the pass (or `drover rollback`) under way began, and how many outcomes this agent has
/// recorded: a new one rewrites the status object.
#[derive(Default)]
pub(super) struct Clock {
    began: Option<(SystemTime, Instant)>,
    recorded: Cell<u64>,
}

impl Clock {
    pub fn recorded(&self) -> u64 {
        self.recorded.get()
    }
}

impl<P: Parts> Agent<P> {
    /// A pass, or a rollback, begins: its outcome's entry starts here.
    pub(super) fn begin_pass(&mut self) {
        self.clock.began = Some((SystemTime::now(), Instant::now()));
    }

    /// Adds `record` to the history. Best effort: a history that cannot be written is a
    /// warning, never the pass's failure.
    pub(super) fn record_history(&self, record: &Record) {
        let (started, took) = match self.clock.began {
            Some((wall, mono)) => (wall, mono.elapsed()),
            None => (SystemTime::now(), Duration::ZERO),
        };
        let entry = Entry::of(record, started, took, crate::history::MAX_ERROR);
        let file = HistoryFile::new(&self.config.agent.state_dir);
        match file.append(entry) {
            Ok(()) => self.clock.recorded.set(self.clock.recorded.get() + 1),
            Err(e) => {
                tracing::warn!(target: "drover", error = %e, "cannot add the outcome to the history")
            }
        }
    }

    /// The last few outcomes, newest first, for the status object.
    pub(super) fn recent_history(&self) -> Vec<Entry> {
        let file = HistoryFile::new(&self.config.agent.state_dir);
        match file.recent(RECENT_IN_STATUS) {
            Ok(entries) => entries.iter().map(|e| e.shortened(STATUS_ERROR)).collect(),
            Err(e) => {
                tracing::warn!(target: "drover", error = %e, "cannot read the history");
                Vec::new()
            }
        }
    }
}
