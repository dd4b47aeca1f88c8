//! Pure decisions, no effects: what to do with a request, which releases to prune, how long to
//! wait before the next poll. Everything here is plain data in, plain data out.

use std::time::{Duration, SystemTime};

use crate::state::{Request, State};
use crate::version::Version;

/// What one reconcile does about the desired version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// This request failed before: leave it until the parameter changes.
    SkipFailed,
    /// The desired version is active and known good: nothing to do.
    InSync,
    /// The release is on disk already: switch to it without downloading.
    Switch,
    /// Download, verify and unpack the release, then switch to it.
    Fetch,
}

/// What the reconcile loop knows when it decides.
pub struct Facts<'a> {
    pub request: &'a Request,
    pub desired: &'a Version,
    pub state: &'a State,
    /// The release `current` points at, if any.
    pub active: Option<&'a str>,
    /// Whether `releases/{desired}` exists.
    pub on_disk: bool,
}

pub fn next_step(f: &Facts<'_>) -> Step {
    let desired = f.desired.as_str();
    if f.state.has_failed(f.request) {
        Step::SkipFailed
    } else if f.active == Some(desired)
        && f.state.good.as_deref() == Some(desired)
        && f.state.pending.is_none()
    {
        Step::InSync
    } else if f.on_disk {
        Step::Switch
    } else {
        Step::Fetch
    }
}

/// Which releases to delete so that at most `keep` remain, oldest first, never one in `protect`
/// (the active release and the previous good one).
pub fn prune_plan(releases: &[(String, SystemTime)], keep: usize, protect: &[&str]) -> Vec<String> {
    let mut newest_first: Vec<&(String, SystemTime)> = releases.iter().collect();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept = releases
        .iter()
        .filter(|(name, _)| protect.contains(&name.as_str()))
        .count();
    let mut remove = Vec::new();
    for (name, _) in newest_first {
        if protect.contains(&name.as_str()) {
            continue;
        }
        if kept < keep {
            kept += 1;
        } else {
            remove.push(name.clone());
        }
    }
    remove
}

/// How a poll went, as far as the pace of polling is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// It got an answer (whatever the pass then did with it).
    Answered,
    /// The API said slow down (`ThrottlingException`).
    Throttled,
    /// A transient error: network, API, disk.
    Failed,
}

/// Throttling backs off faster than it recovers: one level up per throttled poll, one down per
/// two answered polls. In the throttling simulation (docs/FLEET.md) this brought a fleet asking
/// for 3× its budget down to about 1.3× it, where dropping back to full speed at the first
/// answer kept it at 1.7×, and the slowest agents starved.
const ANSWERS_PER_LEVEL: u32 = 2;
/// The highest throttling level: where the window reaches its cap of 32 polls.
const MAX_LEVEL: u32 = 5;

/// The poll loop's memory of trouble: transient failures in a row, and how throttled the API
/// has been lately.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backoff {
    failures: u32,
    throttle: u32,
    answered: u32,
}

impl Backoff {
    pub fn record(&mut self, poll: Poll) {
        match poll {
            Poll::Answered => {
                self.failures = 0;
                self.answered += 1;
                if self.answered >= ANSWERS_PER_LEVEL {
                    self.throttle = self.throttle.saturating_sub(1);
                    self.answered = 0;
                }
            }
            Poll::Throttled => {
                self.throttle = (self.throttle + 1).min(MAX_LEVEL);
                self.answered = 0;
            }
            Poll::Failed => self.failures = self.failures.saturating_add(1),
        }
    }

    /// The pause before the next poll: `poll_interval` plus up to 10 % jitter when all is well;
    /// otherwise "full jitter", a uniform pick in `[0, min(poll · 2^n, 32 · poll))` where `n` is
    /// the failures in a row or the throttling level, whichever is higher. Spread evenly over a
    /// window that doubles, a fleet that was throttled together comes back spread out and asks
    /// for less the longer the service says no. `random` is uniform in [0, 1).
    pub fn delay(&self, poll_interval: Duration, random: f64) -> Duration {
        let random = random.clamp(0.0, 1.0);
        match self.failures.max(self.throttle) {
            0 => poll_interval + poll_interval.mul_f64(0.1 * random),
            n => backoff_window(poll_interval, n).mul_f64(random),
        }
    }
}

/// The window full jitter picks from at level `n` (at least 1).
pub fn backoff_window(poll_interval: Duration, n: u32) -> Duration {
    let cap = poll_interval.saturating_mul(32);
    std::cmp::min(poll_interval.saturating_mul(1 << n.min(16)), cap)
}

/// A random number in [0, 1) from the standard library's per-process random hash keys; good
/// enough for jitter, which needs spread across a fleet, not secrecy.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Pending;

    fn req(n: i64) -> Request {
        Request {
            value: "2".into(),
            parameter_version: n,
        }
    }

    fn step(state: &State, active: Option<&str>, on_disk: bool) -> Step {
        let v = Version::parse("2").unwrap();
        next_step(&Facts {
            request: &req(7),
            desired: &v,
            state,
            active,
            on_disk,
        })
    }

    #[test]
    fn fresh_instance_fetches() {
        assert_eq!(step(&State::default(), None, false), Step::Fetch);
    }

    #[test]
    fn release_on_disk_is_switched_to_without_download() {
        let state = State {
            good: Some("1".into()),
            ..State::default()
        };
        assert_eq!(step(&state, Some("1"), true), Step::Switch);
    }

    #[test]
    fn active_and_good_is_in_sync() {
        let state = State {
            good: Some("2".into()),
            ..State::default()
        };
        assert_eq!(step(&state, Some("2"), true), Step::InSync);
        // Active but never committed (e.g. a crash before the health check): check it again.
        let uncommitted = State {
            good: Some("1".into()),
            ..State::default()
        };
        assert_eq!(step(&uncommitted, Some("2"), true), Step::Switch);
        let pending = State {
            good: Some("2".into()),
            pending: Some(Pending {
                version: "2".into(),
                request: None,
            }),
            ..State::default()
        };
        assert_eq!(step(&pending, Some("2"), true), Step::Switch);
    }

    #[test]
    fn failed_request_is_skipped_until_the_parameter_changes() {
        let mut state = State::default();
        state.remember_failed(req(7));
        assert_eq!(step(&state, Some("1"), true), Step::SkipFailed);
        state.failed = vec![req(6)];
        assert_eq!(step(&state, Some("1"), true), Step::Switch);
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn prune_keeps_newest_and_protected() {
        let releases: Vec<(String, SystemTime)> =
            (1..=6).map(|i| (format!("v{i}"), at(i))).collect();
        let mut gone = prune_plan(&releases, 3, &["v6", "v1"]);
        gone.sort();
        assert_eq!(gone, vec!["v2", "v3", "v4"]);
        assert_eq!(prune_plan(&releases, 6, &[]), Vec::<String>::new());
        assert_eq!(
            prune_plan(&releases, 2, &["v6", "v5"]),
            vec!["v4", "v3", "v2", "v1"]
        );
        // Protected releases are never removed, even beyond `keep`.
        assert!(prune_plan(&releases, 2, &["v1", "v2", "v3"])
            .iter()
            .all(|v| !["v1", "v2", "v3"].contains(&v.as_str())));
    }

    fn backoff(polls: &[Poll]) -> Backoff {
        let mut b = Backoff::default();
        for p in polls {
            b.record(*p);
        }
        b
    }

    #[test]
    fn delay_when_healthy_is_interval_plus_small_jitter() {
        let p = Duration::from_secs(30);
        let b = Backoff::default();
        assert_eq!(b.delay(p, 0.0), p);
        assert_eq!(
            b.delay(p, 0.5),
            Duration::from_secs(31) + Duration::from_millis(500)
        );
        assert!(b.delay(p, 0.999) < Duration::from_secs(33));
    }

    #[test]
    fn failures_back_off_with_full_jitter_and_reset_at_the_first_answer() {
        use Poll::*;
        let p = Duration::from_secs(30);
        assert_eq!(backoff(&[Failed]).delay(p, 0.0), Duration::ZERO);
        assert_eq!(backoff(&[Failed]).delay(p, 0.5), p);
        assert_eq!(backoff(&[Failed]).delay(p, 0.999_999).as_secs(), 59);
        assert_eq!(backoff(&[Failed; 3]).delay(p, 0.5), p * 4);
        assert_eq!(
            backoff(&[Failed; 30]).delay(p, 0.25),
            p * 8,
            "capped at 32 polls"
        );
        assert_eq!(
            backoff(&[Failed, Failed, Answered]).delay(p, 0.0),
            p,
            "back to the pace"
        );
        assert_eq!(
            backoff_window(Duration::from_secs(1), u32::MAX),
            Duration::from_secs(32)
        );
    }

    #[test]
    fn throttling_recovers_one_level_per_two_answers() {
        use Poll::*;
        let p = Duration::from_secs(1);
        let window = |polls: &[Poll]| backoff(polls).delay(p, 0.999_999).as_secs_f64().round();
        assert_eq!(window(&[Throttled, Throttled]), 4.0);
        assert_eq!(window(&[Throttled, Throttled, Answered]), 4.0);
        assert_eq!(window(&[Throttled, Throttled, Answered, Answered]), 2.0);
        assert_eq!(
            window(&[Throttled, Throttled, Answered, Throttled, Answered]),
            8.0
        );
        assert_eq!(window(&[Throttled; 9]), 32.0);
        let recovered = [[Throttled; 9].as_slice(), &[Answered; 10]].concat();
        assert_eq!(
            backoff(&recovered).delay(p, 0.0),
            p,
            "back to the normal pace"
        );
        // A failure on top of throttling: the higher of the two.
        assert_eq!(window(&[Throttled, Failed, Failed, Failed]), 8.0);
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
