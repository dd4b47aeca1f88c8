//! The flow with in-memory stand-ins for SSM, S3, systemd and the app. The same scenarios run
//! against the real parts in `tests/`.

use super::*;
use crate::balancer::tests::MemBalancer;
use crate::digest::Sha256Digest;
use crate::fetch::tests::MemStore;
use crate::service::UnitError;
use crate::source::{Parameter, SourceError};
use crate::state::{Pending, Verdict};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;

struct MemSource(Rc<RefCell<Parameter>>);

impl DesiredSource for MemSource {
    async fn read(&self) -> Result<Parameter, SourceError> {
        Ok(self.0.borrow().clone())
    }
}

#[derive(Default)]
struct FakeUnits {
    restarts: Cell<u32>,
}

impl ServiceManager for Rc<FakeUnits> {
    async fn restart(&self, _: &str) -> Result<(), UnitError> {
        self.restarts.set(self.restarts.get() + 1);
        Ok(())
    }
    async fn is_failed(&self, _: &str) -> Result<bool, UnitError> {
        Ok(false)
    }
}

/// No systemd here: hooks run in a process group (crate::hooks has the scope's tests).
impl crate::service::Confinement for Rc<FakeUnits> {
    async fn confine(&self, _: &str, _: &str, _: u32) -> Result<(), UnitError> {
        Err(UnitError::Unreachable("no systemd in these tests".into()))
    }
    async fn kill_all(&self, _: &str) -> Result<(), UnitError> {
        Ok(())
    }
}

/// The "app": healthy unless the active release contains a file named UNHEALTHY.
struct ReleaseProbe(PathBuf);

impl HealthProbe for ReleaseProbe {
    async fn probe(&self) -> Result<(), String> {
        if self.0.join("current/UNHEALTHY").exists() {
            Err("HTTP 500".into())
        } else {
            Ok(())
        }
    }
}

fn tarball(version: &str, healthy: bool) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("VERSION", version.as_bytes());
    if !healthy {
        add("UNHEALTHY", b"");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

type TestParts = (
    MemSource,
    MemStore,
    Rc<FakeUnits>,
    ReleaseProbe,
    Rc<MemBalancer>,
    crate::lifecycle::NoAutoScaling,
);

struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    parameter: Rc<RefCell<Parameter>>,
    units: Rc<FakeUnits>,
    /// Registered in [`GROUP`]; only a config with `[loadbalancer]` reaches it.
    lb: Rc<MemBalancer>,
    agent: Agent<TestParts>,
}

const GROUP: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/app/0123456789abcdef";

impl World {
    fn new(releases: &[(&str, bool)]) -> Self {
        Self::with_config(releases, "")
    }

    /// With `extra` config sections, and the instance id `i-test`.
    fn with_config(releases: &[(&str, bool)], extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("app");
        let text = format!(
            "[artifact]\nbucket = \"b\"\n[release]\nroot = \"{}\"\nkeep = 2\n[agent]\nstate_dir = \"{}\"\n\
             [health]\nurl = \"http://127.0.0.1:1/\"\ntimeout = \"3s\"\ninterval = \"1s\"\nsuccesses = 2\n{extra}",
            root.display(),
            dir.path().join("state").display()
        );
        let config = Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let mut objects = HashMap::new();
        for (v, healthy) in releases {
            let bytes = tarball(v, *healthy);
            objects.insert(
                format!("releases/{v}.tar.gz.sha256"),
                format!("{}  {v}.tar.gz\n", Sha256Digest::of(&bytes)).into_bytes(),
            );
            objects.insert(format!("releases/{v}.tar.gz"), bytes);
        }
        let parameter = Rc::new(RefCell::new(Parameter {
            value: String::new(),
            version: 0,
            modified: Some(std::time::SystemTime::now()),
        }));
        let units = Rc::new(FakeUnits::default());
        let lb = Rc::new(MemBalancer::registered_in(&[GROUP]));
        let outside = Outside {
            source: MemSource(parameter.clone()),
            store: MemStore(objects),
            services: units.clone(),
            probe: Some(ReleaseProbe(root.clone())),
            balancer: Some(lb.clone()),
            scaling: None,
        };
        let agent = Agent::new(config, outside, Mode::Daemon)
            .with_identity(crate::fleet::Identity::Fixed("i-test".into()));
        World {
            _dir: dir,
            root,
            parameter,
            units,
            lb,
            agent,
        }
    }

    /// `drover promote`: a new parameter version every time.
    fn put(&self, value: &str) {
        let mut p = self.parameter.borrow_mut();
        p.value = value.into();
        p.version += 1;
    }

    fn active(&self) -> Option<String> {
        self.agent.layout().active().unwrap()
    }

    fn state(&self) -> State {
        StateFile::new(&self.root.parent().unwrap().join("state"))
            .load()
            .unwrap()
    }

    fn store_mut(&mut self) -> &mut HashMap<String, Vec<u8>> {
        &mut self.agent.store.0
    }
}

#[tokio::test(start_paused = true)]
async fn first_deploy_upgrade_and_in_sync() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(w.active().as_deref(), Some("1"));
    assert_eq!(
        std::fs::read_to_string(w.root.join("current/VERSION")).unwrap(),
        "1"
    );
    assert_eq!(w.units.restarts.get(), 1);
    assert_eq!(w.agent.reconcile().await, Outcome::InSync);
    assert_eq!(w.units.restarts.get(), 1, "in sync: nothing restarted");

    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    let s = w.state();
    assert_eq!(
        (s.good.as_deref(), s.previous.as_deref()),
        (Some("2"), Some("1"))
    );
    assert_eq!(s.last.unwrap().result, Verdict::Deployed);
    assert!(s.pending.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_rollout_waits_for_this_instance_s_turn() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    // A whole day to spread over, starting now: position 0.0… would be the only one in.
    let position = crate::rollout::position("i-test", &Version::parse("2").unwrap());
    assert!(position > 0.001, "{position}");
    w.put(r#"{"version": "2", "rollout": {"duration": "1d"}}"#);
    assert_eq!(w.agent.reconcile().await, Outcome::AwaitingTurn);
    assert_eq!(w.active().as_deref(), Some("1"));
    assert_eq!(w.units.restarts.get(), 1);
    // The same rollout, started a day ago: everyone's turn has come.
    w.put(r#"{"version": "2", "rollout": {"start": "2000-01-01T00:00:00Z", "duration": "1d"}}"#);
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(w.active().as_deref(), Some("2"));
}

#[tokio::test(start_paused = true)]
async fn a_rollout_without_a_start_needs_to_know_when_the_value_was_put() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.parameter.borrow_mut().modified = None;
    w.put(r#"{"version": "2", "rollout": {"duration": "1m"}}"#);
    assert_eq!(w.agent.reconcile().await, Outcome::Invalid);
    assert_eq!(w.active().as_deref(), Some("1"));
    w.put(r#"{"version": "2", "rollout": {"start": "2000-01-01T00:00:00Z", "duration": "1m"}}"#);
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
}

#[tokio::test(start_paused = true)]
async fn failures_reported_by_the_fleet_halt_the_request_until_it_is_put_again() {
    let mut w = World::with_config(
        &[("1", true), ("2", true)],
        "[fleet]\nstatus_prefix = \"status/\"\nmax_failures = 2\n",
    );
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    let n = w.parameter.borrow().version;
    for instance in ["i-a", "i-b"] {
        let key = crate::fleet::failure_key("status/", "2", n, instance);
        w.store_mut().insert(key, b"{}".to_vec());
    }
    assert_eq!(w.agent.reconcile().await, Outcome::Halted);
    assert_eq!(w.active().as_deref(), Some("1"));
    // The rollout's own threshold wins over the config's.
    w.put(r#"{"version": "2", "rollout": {"duration": "0s", "max_failures": 3}}"#);
    let n = w.parameter.borrow().version;
    for instance in ["i-a", "i-b"] {
        let key = crate::fleet::failure_key("status/", "2", n, instance);
        w.store_mut().insert(key, b"{}".to_vec());
    }
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
}

#[tokio::test(start_paused = true)]
async fn unhealthy_version_is_reverted_and_not_retried_until_put_again() {
    let mut w = World::new(&[("1", true), ("2", false)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
    assert_eq!(w.active().as_deref(), Some("1"));
    let s = w.state();
    assert_eq!(s.good.as_deref(), Some("1"));
    assert_eq!(s.last.as_ref().unwrap().result, Verdict::Reverted);
    assert!(s.last.unwrap().error.unwrap().contains("HTTP 500"));
    let restarts = w.units.restarts.get();
    assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
    assert_eq!(
        w.units.restarts.get(),
        restarts,
        "a skipped request restarts nothing"
    );
    // The same value put again is a new request: it is tried (and fails) again.
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
}

#[tokio::test(start_paused = true)]
async fn no_previous_release_leaves_the_failed_one_current() {
    let mut w = World::new(&[("1", false)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Failed);
    assert_eq!(w.active().as_deref(), Some("1"));
    assert_eq!(w.state().last.unwrap().result, Verdict::Failed);
    assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
}

#[tokio::test(start_paused = true)]
async fn digest_mismatch_is_rejected_before_anything_is_unpacked() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.store_mut()
        .insert("releases/2.tar.gz".into(), tarball("evil", true));
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Rejected);
    assert_eq!(w.active().as_deref(), Some("1"));
    assert!(!w.root.join("releases/2").exists());
    assert_eq!(
        std::fs::read_dir(w.root.join(".staging")).unwrap().count(),
        0
    );
    assert_eq!(w.state().last.unwrap().result, Verdict::Rejected);

    // A digest in the JSON value wins over the .sha256 object.
    let good = Sha256Digest::of(&tarball("evil", true));
    w.parameter.borrow_mut().version += 1;
    w.parameter.borrow_mut().value = format!(r#"{{"version":"2","sha256":"{good}"}}"#);
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(
        std::fs::read_to_string(w.root.join("current/VERSION")).unwrap(),
        "evil"
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_on_disk_is_switched_to_without_download() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    w.agent.reconcile().await;
    w.store_mut().clear();
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(w.active().as_deref(), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn transient_errors_change_nothing() {
    let mut w = World::new(&[("1", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("9");
    assert_eq!(
        w.agent.reconcile().await,
        Outcome::Waiting,
        "not found yet: maybe still uploading"
    );
    assert_eq!(w.active().as_deref(), Some("1"));
    assert!(w.state().failed.is_empty());
    w.put("not a version!");
    assert_eq!(w.agent.reconcile().await, Outcome::Invalid);
    assert_eq!(w.active().as_deref(), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_switch_goes_back_to_the_good_release_then_retries() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    w.agent.reconcile().await;
    // As if killed after switching to 3 and before committing it.
    std::fs::create_dir_all(w.root.join("releases/3")).unwrap();
    w.agent.layout().switch("3").unwrap();
    let mut s = w.state();
    s.pending = Some(Pending {
        version: "3".into(),
        request: None,
    });
    StateFile::new(&w.root.parent().unwrap().join("state"))
        .save(&s)
        .unwrap();
    std::fs::create_dir_all(w.root.join(".staging/fetch-3-1/release")).unwrap();

    assert_eq!(w.agent.reconcile().await, Outcome::InSync);
    assert_eq!(w.active().as_deref(), Some("2"));
    assert!(w.state().pending.is_none());
    assert_eq!(
        std::fs::read_dir(w.root.join(".staging")).unwrap().count(),
        0,
        "staging cleaned"
    );
}

#[tokio::test(start_paused = true)]
async fn rollback_returns_to_previous_and_skips_the_current_request() {
    let mut w = World::new(&[("1", true), ("2", true)]);
    w.put("1");
    w.agent.reconcile().await;
    w.put("2");
    w.agent.reconcile().await;
    assert!(matches!(w.agent.rollback().await, Ok(true)));
    assert_eq!(w.active().as_deref(), Some("1"));
    assert_eq!(w.state().last.unwrap().result, Verdict::RolledBack);
    assert_eq!(w.agent.reconcile().await, Outcome::Skipped);
    let refused = w.agent.rollback().await.unwrap_err();
    assert!(matches!(refused, Error::NothingToRollBack), "{refused}");
    assert_eq!(
        refused.to_string(),
        "no previous good release to roll back to"
    );
}

#[tokio::test(start_paused = true)]
async fn old_releases_are_pruned_to_keep() {
    let mut w = World::new(&[("1", true), ("2", true), ("3", true), ("4", true)]);
    for v in ["1", "2", "3", "4"] {
        w.put(v);
        assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
    }
    let names: Vec<String> = w
        .agent
        .layout()
        .list()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["3", "4"]);
}

fn with_load_balancer(releases: &[(&str, bool)]) -> World {
    World::with_config(
        releases,
        &format!("[loadbalancer]\ntarget_groups = [\"{GROUP}\"]\nport = 8080\n"),
    )
}

#[tokio::test(start_paused = true)]
async fn a_deploy_drains_before_the_switch_and_registers_after_the_gate() {
    let mut w = with_load_balancer(&[("1", true), ("2", true)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert_eq!(
        *w.lb.calls.borrow(),
        [
            "deregister ".to_owned() + GROUP,
            "register ".to_owned() + GROUP
        ]
    );
    assert!(w.state().out_of_service.is_empty());
    // In sync: the load balancer is not touched.
    assert_eq!(w.agent.reconcile().await, Outcome::InSync);
    assert_eq!(w.lb.calls.borrow().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_release_the_load_balancer_finds_unhealthy_is_reverted_and_the_previous_registered() {
    let mut w = with_load_balancer(&[("1", true), ("2", true)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    w.lb.sick.set(1);
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Reverted);
    assert_eq!(w.active().as_deref(), Some("1"));
    let last = w.state().last.unwrap();
    assert!(
        last.error
            .as_deref()
            .unwrap_or_default()
            .contains("is unhealthy after"),
        "{last:?}"
    );
    let calls: Vec<String> = (w.lb.calls.borrow().iter())
        .map(|call| call.split(' ').next().unwrap_or_default().to_owned())
        .collect();
    // 1: out and in; 2: out, in (unhealthy); the revert: out again, in with 1.
    assert_eq!(
        calls,
        [
            "deregister",
            "register",
            "deregister",
            "register",
            "deregister",
            "register"
        ]
    );
    assert!(w.state().out_of_service.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_instance_in_no_target_group_is_left_out_of_them() {
    let mut w = with_load_balancer(&[("1", true)]);
    w.lb.targets.borrow_mut().clear();
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    assert!(w.lb.calls.borrow().is_empty(), "{:?}", w.lb.calls.borrow());
}

#[tokio::test(start_paused = true)]
async fn groups_left_by_a_killed_drover_get_the_instance_back_on_the_next_pass() {
    let mut w = with_load_balancer(&[("1", true)]);
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    // As if drover died between the drain and the registration.
    w.lb.targets.borrow_mut().clear();
    let mut state = w.state();
    state.leaving_service(&[GROUP.to_owned()]);
    StateFile::new(&w.root.parent().unwrap().join("state"))
        .save(&state)
        .unwrap();
    assert_eq!(w.agent.reconcile().await, Outcome::InSync);
    assert_eq!(
        w.lb.calls.borrow().last().map(String::as_str),
        Some(&*format!("register {GROUP}"))
    );
    assert!(w.state().out_of_service.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_load_balancer_call_that_fails_stops_the_deploy_before_the_switch_and_puts_the_instance_back(
) {
    let second = GROUP.replace("/app/", "/api/");
    let mut w = World::with_config(
        &[("1", true), ("2", true)],
        &format!("[loadbalancer]\ntarget_groups = [\"{GROUP}\", \"{second}\"]\nport = 8080\n"),
    );
    let long_ago = tokio::time::Instant::now() - std::time::Duration::from_secs(3600);
    (w.lb.targets.borrow_mut()).insert(second.clone(), (true, long_ago, false));
    w.put("1");
    assert_eq!(w.agent.reconcile().await, Outcome::Deployed);
    *w.lb.denied.borrow_mut() = Some(second.clone());
    w.lb.calls.borrow_mut().clear();
    w.put("2");
    assert_eq!(w.agent.reconcile().await, Outcome::Retry);
    assert_eq!(w.active().as_deref(), Some("1"), "nothing switched");
    assert_eq!(
        *w.lb.calls.borrow(),
        [
            format!("deregister {GROUP}"),
            format!("register {GROUP}"),
            format!("register {second}")
        ],
        "the group it left, and the one it was still in, have it back"
    );
    assert!(w.state().out_of_service.is_empty());
}

/// `[metrics] textfile`, written after each pass of the daemon: the requests, the endings and the
/// last deploy's phases (the Prometheus text itself is `crate::metrics`'s to test).
#[tokio::test(start_paused = true)]
async fn metrics_count_the_passes_and_endings_of_the_daemon() {
    let collector = tempfile::tempdir().unwrap();
    let path = collector.path().join("drover.prom");
    let extra = format!("[metrics]\ntextfile = \"{}\"\n", path.display());
    let mut w = World::with_config(&[("1", true), ("2", false)], &extra);
    let read = || std::fs::read_to_string(&path).unwrap();
    w.put("1");
    assert_eq!(w.agent.pass().await, Outcome::Deployed);
    let text = read();
    assert!(text.contains("drover_deploys_total{result=\"deployed\"} 1\n"));
    assert!(text.contains("drover_current_version_info{version=\"1\"} 1\n"));
    assert!(text.contains("drover_last_success_timestamp_seconds "));
    for phase in ["download", "verify", "unpack", "restart", "health"] {
        assert!(text.contains(&format!("{{phase=\"{phase}\"}}")), "{text}");
    }
    w.put("2");
    assert_eq!(w.agent.pass().await, Outcome::Reverted);
    assert_eq!(w.agent.pass().await, Outcome::Skipped);
    let text = read();
    for line in [
        "drover_desired_version_info{version=\"2\",parameter_version=\"2\"} 1\n",
        "drover_current_version_info{version=\"1\"} 1\n",
        "drover_polls_total 3\n",
        "drover_deploys_total{result=\"deployed\"} 1\n",
        "drover_deploys_total{result=\"reverted\"} 1\n",
        "drover_last_deploy_info{version=\"2\",result=\"reverted\"} 1\n",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    // Passes that try no deploy count none.
    assert!(text.contains("drover_environment_changes_total{result=\"reverted\"} 0\n"));
}

mod pause_and_history;
