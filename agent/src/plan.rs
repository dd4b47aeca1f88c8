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

/// The pause before the next poll: `poll_interval` plus up to 10 % jitter when all is well;
/// after `failures` consecutive transient errors (throttling among them), "full jitter": a
/// uniform pick in `[0, min(poll · 2^failures, 32 · poll))`. Spread evenly over a window that
/// doubles, a fleet that was throttled together comes back spread out, and asks for less the
/// longer the service says no (see docs/FLEET.md).
/// `random` is uniform in [0, 1).
pub fn next_delay(poll_interval: Duration, failures: u32, random: f64) -> Duration {
    let random = random.clamp(0.0, 1.0);
    if failures == 0 {
        return poll_interval + poll_interval.mul_f64(0.1 * random);
    }
    backoff_window(poll_interval, failures).mul_f64(random)
}

/// The window full jitter picks from after `failures` (at least 1) failures in a row.
pub fn backoff_window(poll_interval: Duration, failures: u32) -> Duration {
    let cap = poll_interval.saturating_mul(32);
    std::cmp::min(poll_interval.saturating_mul(1 << failures.min(16)), cap)
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

    #[test]
    fn delay_when_healthy_is_interval_plus_small_jitter() {
        let p = Duration::from_secs(30);
        assert_eq!(next_delay(p, 0, 0.0), p);
        assert_eq!(
            next_delay(p, 0, 0.5),
            Duration::from_secs(31) + Duration::from_millis(500)
        );
        assert!(next_delay(p, 0, 0.999) < Duration::from_secs(33));
    }

    #[test]
    fn delay_backs_off_with_full_jitter_in_a_doubling_window_with_a_cap() {
        let p = Duration::from_secs(30);
        assert_eq!(next_delay(p, 1, 0.0), Duration::ZERO);
        assert_eq!(next_delay(p, 1, 0.5), Duration::from_secs(30));
        assert_eq!(next_delay(p, 1, 0.999_999).as_secs(), 59);
        assert_eq!(next_delay(p, 3, 0.5), Duration::from_secs(120));
        assert_eq!(backoff_window(p, 5), p * 32);
        assert_eq!(backoff_window(p, 30), p * 32);
        assert_eq!(next_delay(p, 30, 0.25), p * 8);
        let short = Duration::from_secs(1);
        assert_eq!(backoff_window(short, u32::MAX), Duration::from_secs(32));
    }

    #[test]
    fn random_unit_is_in_range() {
        for _ in 0..100 {
            let r = random_unit();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
