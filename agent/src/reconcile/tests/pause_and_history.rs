//! `drover pause` and `drover history` in the flow, with the in-memory stand-ins of the parent
//! module; `tests/history.rs` runs the same through the real parts.

use super::*;
use crate::history::HistoryFile;
use crate::pause::{Pause, PauseFile};
use std::time::{Duration, SystemTime};

fn state_dir(w: &World) -> PathBuf {
    w.root.parent().unwrap().join("state")
}

fn pause(w: &World, until: Option<SystemTime>) {
    let pause = Pause {
        since: crate::rfc3339::format(SystemTime::now()),
        until: until.map(crate::rfc3339::format),
        reason: Some("incident 7".into()),
    };
    PauseFile::new(&state_dir(w)).save(&pause).unwrap();
}

fn history(w: &World) -> Vec<(Option<String>, Verdict)> {
    let entries = HistoryFile::new(&state_dir(w)).recent(100).unwrap();
    entries.into_iter().map(|e| (e.version, e.result)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_paused_instance_polls_but_deploys_nothing_until_resumed() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    pause(&w, None);
    assert_eq!(
        w.agent.reconcile().await,
        Outcome::Paused,
        "in sync, paused"
    );
    w.put("2");
    for _ in 0..3 {
        assert_eq!(w.agent.reconcile().await, Outcome::Paused);
    }
    assert_eq!(w.active().as_deref(), Some("1"));
    assert_eq!(w.units.restarts.get(), 1, "nothing restarted");
    assert!(w.agent.pause.is_some(), "the status object says so");
    assert!(!w.root.join("releases/2").exists(), "nothing downloaded");

    assert!(PauseFile::new(&state_dir(&w)).remove().unwrap());
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(w.active().as_deref(), Some("2"));
    assert!(w.agent.pause.is_none());
    // In-sync and paused passes record nothing; the deploys do, newest first.
    assert_eq!(w.agent.reconcile().await, Outcome::InSync);
    assert_eq!(
        history(&w),
        [
            (Some("2".into()), Verdict::Deployed),
            (Some("1".into()), Verdict::Deployed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_pause_lapses_by_itself() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    pause(&w, Some(SystemTime::now() + Duration::from_secs(3600)));
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Paused);
    pause(&w, Some(SystemTime::now() - Duration::from_secs(1)));
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
}

#[tokio::test(start_paused = true)]
async fn a_switch_left_in_flight_is_undone_while_paused() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    // As if killed after switching to 2 and before committing it, then paused.
    w.put("2");
    std::fs::create_dir_all(w.root.join("releases/2")).unwrap();
    w.agent.layout().switch("2").unwrap();
    let mut s = w.state();
    s.pending = Some(Pending {
        version: "2".into(),
        request: None,
    });
    StateFile::new(&state_dir(&w)).save(&s).unwrap();
    pause(&w, None);

    assert_eq!(w.agent.reconcile().await, Outcome::Paused);
    assert_eq!(w.active().as_deref(), Some("1"), "switched back");
    assert!(w.state().pending.is_none());
    assert_eq!(w.units.restarts.get(), 2, "restarted on the good release");
}

#[tokio::test(start_paused = true)]
async fn failures_rollbacks_and_invalid_requests_are_recorded_once() {
    let mut w = World::new(&[("1", true), ("2", false), ("3", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
    assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
    w.put("not a version!");
    assert_eq!(w.agent.reconcile().await, Outcome::Invalid);
    w.agent.mode = Mode::Once;
    assert_eq!(
        w.agent.reconcile().await,
        Outcome::Invalid,
        "reported again"
    );
    w.put("3");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert!(matches!(w.agent.rollback().await, Ok(true)));
    let entries = HistoryFile::new(&state_dir(&w)).recent(100).unwrap();
    let results: Vec<_> = entries.iter().map(|e| e.result).collect();
    assert_eq!(
        results,
        [
            Verdict::RolledBack,
            Verdict::Deployed,
            Verdict::Invalid,
            Verdict::Reverted,
            Verdict::Deployed
        ]
    );
    let reverted = &entries[3];
    assert_eq!(reverted.version.as_deref(), Some("2"));
    assert_eq!(reverted.parameter_version, Some(2));
    assert!(reverted.error.as_deref().unwrap().contains("HTTP 500"));
    assert!(reverted.ended >= reverted.started);
}
