//! kill -9 at every step of a deployment, on an instance with real systemd: the agent (a debug
//! build, which has crash points; see agent/src/failpoint.rs) is killed at each point in turn,
//! systemd restarts it, and it must converge to the new release healthy (or, for a release that
//! fails, to the old one), with `current` pointing at a complete release at every moment we look,
//! and no staging left behind.
//!
//! Also here, because they need the same real parts: a revert whose previous release is
//! unhealthy too (`revert_failed`, and no restart loop after it), and a parameter that flaps.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use drover::failpoint;
use drover::userdata::WriteFile;
use drover_tests::{wait_for, Instance, World};

const CONVERGE: Duration = Duration::from_secs(60);
const CRASH_FILE: &str = "/var/lib/drover/crash-at";

/// Points in the revert path: the version deployed for them is unhealthy.
const REVERT_POINTS: &[&str] = &["after_failed_saved", "after_revert_switch"];

/// The drop-in that arms the crash points and restarts the agent quickly.
fn crash_dropin() -> WriteFile {
    WriteFile {
        path: "/etc/systemd/system/drover.service.d/crash.conf".into(),
        mode: 0o644,
        content: format!(
            "[Service]\nEnvironment=DROVER_CRASH_FILE={CRASH_FILE}\nRestartSec=200ms\n"
        ),
    }
}

fn boot(world: &World) -> Instance {
    let mut spec = world.boot_spec();
    spec.extra_files.push(crash_dropin());
    world.boot(spec)
}

/// `current` must always name a complete release: one with both files of the app.
fn assert_current_complete(instance: &Instance, when: &str) {
    let Some(target) = instance.current_release() else {
        panic!("{when}: current is missing");
    };
    let dir = instance.path("/opt/app").join(&target);
    for file in ["VERSION", "app.py"] {
        assert!(
            dir.join(file).is_file(),
            "{when}: current -> {} has no {file}",
            target.display()
        );
    }
}

fn restarts(instance: &Instance) -> u32 {
    instance
        .unit_property("drover.service", "NRestarts")
        .parse()
        .unwrap_or(0)
}

#[test]
fn kill_9_at_every_crash_point_converges() {
    let world = World::new("crash");
    let instance = boot(&world);
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, CONVERGE);
    let mut good = "1.0.0".to_string();
    let mut table = Vec::new();

    for (i, point) in failpoint::ALL.iter().enumerate() {
        let version = format!("2.{i}.0");
        let healthy = !REVERT_POINTS.contains(point);
        let before = restarts(&instance);
        std::fs::write(instance.path(CRASH_FILE), point)
            .unwrap_or_else(|e| panic!("cannot arm {point}: {e}"));
        let started = Instant::now();
        world.release(&version, healthy);

        // The crash, then convergence; `current` is checked all along.
        let expect = if healthy {
            version.clone()
        } else {
            good.clone()
        };
        let mut samples = 0;
        let deadline = Instant::now() + CONVERGE;
        loop {
            assert_current_complete(&instance, point);
            samples += 1;
            let crashed = restarts(&instance) > before;
            let status = instance.status_json();
            let settled = status["good"] == expect.as_str()
                && status["current"] == expect.as_str()
                && status["pending"].is_null();
            let serving = instance.version_served();
            if crashed && settled && serving.as_deref() == Some(expect.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no convergence to {expect} after a crash at {point} (crashed: {crashed}, \
                 serving {serving:?}): {status}\n{}",
                instance.container.journal_text("drover.service")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            !instance.path(CRASH_FILE).exists(),
            "{point} was never reached"
        );
        // One more pass, then nothing may be left in the staging area.
        std::thread::sleep(Duration::from_millis(1500));
        instance.assert_staging_empty();
        assert_current_complete(&instance, point);
        if !healthy {
            let status = instance.status_json();
            let failed = status["failed"].as_array().cloned().unwrap_or_default();
            assert!(
                failed.iter().any(|r| r["value"] == version.as_str()),
                "{point}: the failed request is remembered: {status}"
            );
        }
        good = expect.clone();
        table.push((*point, started.elapsed(), samples, expect));
    }

    println!("| crash point | converged to | after | checks of current |\n|---|---|---:|---:|");
    for (point, took, samples, to) in &table {
        println!("| {point} | {to} | {took:.1?} | {samples} |");
    }
}

#[test]
fn unhealthy_previous_release_gives_revert_failed_and_no_restart_loop() {
    let world = World::new("revertfail");
    let instance = boot(&world);
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, CONVERGE);
    // 1.0.0 goes bad while it runs (its health answers 500 from now on).
    instance.exec_ok(&["touch", "/opt/app/releases/1.0.0/UNHEALTHY"]);

    world.release("2.0.0", false);
    let failed = instance.wait_for_events("revert_failed", 1, CONVERGE);
    let error = failed[0]["ERROR"].as_str().unwrap_or("");
    assert!(error.contains("1.0.0 is not healthy either"), "{error}");
    assert_eq!(failed[0]["PRIORITY"], "3");
    let status = instance.status_json();
    assert_eq!(status["last"]["result"], "revert_failed");
    assert_eq!(status["current"], "1.0.0");

    // No loop: over several polls, nothing is restarted, redeployed or reverted again.
    let restarted = instance.journal_events("unit_restarted").len();
    let app_pid = instance.unit_property("app.service", "MainPID");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(instance.journal_events("unit_restarted").len(), restarted);
    assert_eq!(instance.journal_events("revert_failed").len(), 1);
    assert_eq!(instance.journal_events("deploy_started").len(), 2);
    assert_eq!(instance.unit_property("app.service", "MainPID"), app_pid);
    assert_eq!(restarts(&instance), 0, "drover itself did not restart");
    assert_eq!(
        instance.unit_property("drover.service", "ActiveState"),
        "active"
    );
    // An operator's fix is a new request: 3.0.0, healthy, deploys.
    world.release("3.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, CONVERGE);
    assert_eq!(deployed[1]["VERSION"], "3.0.0");
}

#[test]
fn a_flapping_parameter_restarts_at_most_once_per_poll() {
    let world = World::new("flap");
    let instance = boot(&world);
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, CONVERGE);
    world.release("2.0.0", true);
    instance.wait_for_events("deployed", 2, CONVERGE);
    let restarted = instance.journal_events("unit_restarted").len();

    // 40 changes in 4 s, ten times the poll rate (poll_interval = 1s).
    let started = Instant::now();
    for i in 0..40 {
        world.promote(if i % 2 == 0 { "1.0.0" } else { "2.0.0" });
        std::thread::sleep(Duration::from_millis(100));
    }
    let flapped = started.elapsed();
    world.promote("1.0.0");
    wait_for(CONVERGE, "the last value to win", || {
        let status = instance.status_json();
        (status["good"] == "1.0.0" && status["current"] == "1.0.0").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let elapsed = started.elapsed();
    let restarts_during = instance.journal_events("unit_restarted").len() - restarted;
    let polls = elapsed.as_secs_f64() / 1.0;
    println!(
        "flap: 41 changes in {flapped:.1?}; {restarts_during} restarts in {elapsed:.1?} (~{polls:.0} polls)"
    );
    assert!(
        (restarts_during as f64) <= polls + 1.0,
        "{restarts_during} restarts in {elapsed:?}"
    );
    assert_eq!(instance.version_served().as_deref(), Some("1.0.0"));
    // Neither release was downloaded again: both stayed on disk.
    assert_eq!(instance.journal_events("artifact_verified").len(), 2);
}

/// kill -9 right after a new environment file is written, before the units are restarted for it:
/// the restarted agent puts the last good file back and restarts the app for it, then applies
/// the change again through the health gate. A bad change ends reverted, a good one applied.
#[test]
fn kill_9_during_an_environment_change_puts_the_good_file_back() {
    let world = World::new("crashenv");
    let moto = drover_tests::Moto::shared();
    let env = world.env_path();
    moto.put_parameter(&format!("{env}/GREETING"), "first");
    let mut spec = world.boot_spec_with_environment(&env, "");
    spec.extra_files.push(crash_dropin());
    world.release("1.0.0", true);
    let instance = world.boot(spec);
    instance.wait_for_events("deployed", 1, CONVERGE);
    let env_file = instance.path("/var/lib/drover/app.env");

    // A change that breaks the app (it would listen elsewhere), crashed after the write.
    for point in failpoint::ENVIRONMENT {
        std::fs::write(instance.path(CRASH_FILE), point).unwrap();
    }
    let before = restarts(&instance);
    moto.put_parameter(
        &format!("{env}/APP_PORT"),
        &drover_tests::free_port().to_string(),
    );
    instance.wait_for_events("reverted", 1, CONVERGE);
    assert!(restarts(&instance) > before, "the agent was killed");
    assert!(!instance.path(CRASH_FILE).exists());
    assert_eq!(instance.served(), "1.0.0");
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(
        !text.contains("APP_PORT") && text.contains("first"),
        "{text}"
    );
    assert_eq!(
        instance.status_json()["last"]["result"],
        "environment_reverted"
    );
    moto.put_parameter(&format!("{env}/APP_PORT"), &world.app_port.to_string());

    // A good change, crashed at the same point, ends applied.
    std::fs::write(instance.path(CRASH_FILE), failpoint::ENVIRONMENT[0]).unwrap();
    let before = restarts(&instance);
    moto.put_parameter(&format!("{env}/GREETING"), "second");
    wait_for(CONVERGE, "the second greeting to be applied", || {
        let text = std::fs::read_to_string(&env_file).ok()?;
        let status = instance.status_json();
        (text.contains("second") && status["last"]["result"] == "environment_applied").then_some(())
    });
    assert!(restarts(&instance) > before, "the agent was killed");
    assert_eq!(instance.served(), "1.0.0");
    let good = std::fs::read_to_string(instance.path("/var/lib/drover/app.env.good")).unwrap();
    assert!(good.contains("second"), "{good}");
}

/// A hook run by a `drover once` that was killed keeps running in its scope (only a hook of
/// `drover.service` is bound to it, and stopped with it): the next pass, the daemon's here, stops
/// it before it goes on, so the deploy it tries again never runs beside the old attempt's hook.
#[test]
fn a_hook_left_running_by_a_killed_drover_is_stopped_before_the_next_pass() {
    let world = World::new("hook-leftover");
    let instance = world.boot_instance();
    instance.exec_ok(&["systemctl", "stop", "drover"]);
    let v1 = world.release_dir_with_hooks("1.0.0", &[("pre-activate", "echo started; sleep 300")]);
    world.publish("1.0.0", &v1);
    world.promote("1.0.0");
    // `drover once` from an operator's login (a scope, as a session is), killed while its hook
    // sleeps.
    let once = instance.exec(&[
        "sh",
        "-c",
        "set -a; . /etc/default/drover; \
         exec timeout --signal=KILL 8 systemd-run --scope --quiet drover once",
    ]);
    assert!(!once.status.success());
    let left = instance.hook_scopes();
    assert_eq!(
        left.len(),
        1,
        "the killed run's hook still runs: {left:?}; drover once said {}",
        String::from_utf8_lossy(&once.stderr)
    );

    instance.exec_ok(&["systemctl", "start", "drover"]);
    let now = wait_for(CONVERGE, "the daemon to run the hook again", || {
        let now = instance.hook_scopes();
        (!now.is_empty() && now != left).then_some(now)
    });
    assert_eq!(now.len(), 1, "only the daemon's hook runs: {now:?}");
}
