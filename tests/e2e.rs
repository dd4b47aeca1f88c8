//! The deployment flow end to end, through the real parts: releases published and promoted from
//! the host with `drover publish` / `drover promote` against moto; an instance booted with real
//! systemd and journald, where cloud-init installed drover from user-data; the real sample app.
//! Every assertion is about what an operator would see: the bytes the app serves, where `current`
//! points, `drover status --json`, and `journalctl -u drover EVENT=…`.

use drover_tests::{sha256_hex, wait_for, Instance, World};
use serde_json::Value;
use std::time::Duration;

const DEPLOY: Duration = Duration::from_secs(60);

fn current(instance: &Instance) -> String {
    instance
        .current_release()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The parameter's current `Version` number: the id of the latest deploy request.
fn parameter_version(world: &World) -> i64 {
    world
        .moto
        .get_parameter(&world.parameter)
        .map(|(_, version)| version)
        .unwrap_or_else(|| panic!("parameter {} is not set", world.parameter))
}

fn field<'a>(event: &'a Value, name: &str) -> &'a str {
    event[name].as_str().unwrap_or("")
}

fn events_for(instance: &Instance, event: &str, version: &str) -> usize {
    instance
        .journal_events(event)
        .iter()
        .filter(|e| field(e, "VERSION") == version)
        .count()
}

#[test]
fn first_deploy_upgrade_automatic_revert_and_switch_back_without_download() {
    let world = World::new("lifecycle");
    let instance = world.boot_instance();

    // An empty instance, before anything is promoted: the agent says why it has nothing to do.
    let polls = instance.wait_for_events("poll_failed", 1, DEPLOY);
    assert!(
        field(&polls[0], "ERROR").contains("not found"),
        "{:?}",
        polls[0]
    );
    assert_eq!(field(&polls[0], "PRIORITY"), "3");
    assert_eq!(current(&instance), "");

    // First deploy.
    world.release("1.0.0", true);
    let deployed = instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(field(&deployed[0], "VERSION"), "1.0.0");
    assert_eq!(field(&deployed[0], "PRIORITY"), "6");
    assert_eq!(field(&deployed[0], "SYSLOG_IDENTIFIER"), "drover");
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(current(&instance), "releases/1.0.0");
    let verified = instance.journal_events("artifact_verified");
    assert_eq!(field(&verified[0], "SHA256").len(), 64);
    let restarted = instance.journal_events("unit_restarted");
    assert_eq!(field(&restarted[0], "UNIT"), "app.service");

    // Upgrade.
    world.release("2.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, DEPLOY);
    assert_eq!(field(&deployed[1], "VERSION"), "2.0.0");
    assert_eq!(field(&deployed[1], "PREVIOUS_VERSION"), "1.0.0");
    assert_eq!(
        field(&deployed[1], "PARAMETER_VERSION"),
        parameter_version(&world).to_string()
    );
    assert_eq!(instance.served(), "2.0.0");
    let status = instance.status_json();
    assert_eq!(
        (&status["current"], &status["good"], &status["previous"]),
        (
            &Value::from("2.0.0"),
            &Value::from("2.0.0"),
            &Value::from("1.0.0")
        )
    );
    assert_eq!(status["last"]["result"], "deployed");

    // An unhealthy version is reverted automatically.
    world.release("3.0.0", false);
    let first_try = parameter_version(&world);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(field(&reverted[0], "VERSION"), "3.0.0");
    assert_eq!(field(&reverted[0], "PREVIOUS_VERSION"), "2.0.0");
    assert_eq!(field(&reverted[0], "PRIORITY"), "4");
    assert!(
        field(&reverted[0], "ERROR").contains("HTTP 500"),
        "{:?}",
        reverted[0]
    );
    let unhealthy = instance.journal_events("health_failed");
    assert_eq!(field(&unhealthy[0], "PRIORITY"), "3");
    assert_eq!(instance.served(), "2.0.0");
    assert_eq!(current(&instance), "releases/2.0.0");
    let status = instance.status_json();
    assert_eq!(status["last"]["result"], "reverted");
    assert_eq!(status["last"]["version"], "3.0.0");
    assert_eq!(status["good"], "2.0.0");

    // ...and not retried while the parameter stays as it is: reported once, then left alone.
    instance.wait_for_events("skipped_failed_version", 1, DEPLOY);
    std::thread::sleep(Duration::from_secs(4)); // several polls at poll_interval = 1s
    assert_eq!(events_for(&instance, "deploy_started", "3.0.0"), 1);
    assert_eq!(instance.journal_events("skipped_failed_version").len(), 1);

    // Putting the same value again is a new request: it is tried (and reverted) again.
    world.promote("3.0.0");
    let reverted = instance.wait_for_events("reverted", 2, DEPLOY);
    assert_eq!(field(&reverted[1], "VERSION"), "3.0.0");
    let second_try: i64 = field(&reverted[1], "PARAMETER_VERSION")
        .parse()
        .unwrap_or(0);
    assert!(second_try > first_try, "{second_try} > {first_try}");
    assert_eq!(instance.served(), "2.0.0");

    // Back to 1.0.0, still on disk: switched to without a download. The tarball in S3 is now
    // junk, so a download would have been rejected.
    world
        .moto
        .put_object(&world.bucket, "releases/1.0.0.tar.gz", b"not a release");
    world.promote("1.0.0");
    let back = parameter_version(&world).to_string();
    let deployed = instance.wait_for_events("deployed", 3, DEPLOY);
    assert_eq!(field(&deployed[2], "VERSION"), "1.0.0");
    assert_eq!(field(&deployed[2], "PARAMETER_VERSION"), back);
    let downloads = instance.journal_events("artifact_verified");
    assert!(
        downloads
            .iter()
            .all(|e| field(e, "PARAMETER_VERSION") != back),
        "1.0.0 was downloaded again: {downloads:?}"
    );
    assert!(instance.journal_events("artifact_rejected").is_empty());
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(current(&instance), "releases/1.0.0");
    instance.assert_staging_empty();

    // The operator rolls back to the previous good release (2.0.0): each step's event names the
    // release it goes to, and the one it leaves (issue 18: health_passed named 1.0.0).
    let out = instance.exec(&["drover", "rollback"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    for event in ["switched", "unit_restarted", "health_passed"] {
        let line = said
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} in: {said}"));
        assert!(
            line.contains("version=\"2.0.0\"") && line.contains("previous_version=\"1.0.0\""),
            "{line}"
        );
    }
    let undone = said
        .lines()
        .find(|l| l.contains("event=\"reverted\""))
        .unwrap_or_default();
    assert!(
        undone.contains("version=\"1.0.0\"") && undone.contains("previous_version=\"2.0.0\""),
        "{said}"
    );
    assert_eq!(instance.served(), "2.0.0");

    // Every entry drover wrote to the journal has an EVENT.
    let journal = instance.exec(&[
        "journalctl",
        "-u",
        "drover.service",
        "-o",
        "json",
        "--no-pager",
    ]);
    let entries: Vec<Value> = String::from_utf8_lossy(&journal.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &Value| field(e, "SYSLOG_IDENTIFIER") == "drover")
        .collect();
    assert!(entries.len() > 20, "{} entries", entries.len());
    let without: Vec<&str> = entries
        .iter()
        .filter(|e| field(e, "EVENT").is_empty())
        .map(|e| field(e, "MESSAGE"))
        .collect();
    assert!(without.is_empty(), "entries without EVENT: {without:?}");
}

#[test]
fn checksum_mismatch_is_rejected_and_the_old_release_keeps_serving() {
    let world = World::new("checksum");
    let instance = world.boot_instance();
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);

    // 2.0.0's digest file names another digest: as if the tarball had been swapped.
    let tarball = world.app_tarball("2.0.0", true);
    world.publish("2.0.0", &tarball);
    let wrong = sha256_hex(b"some other tarball");
    world.moto.put_object(
        &world.bucket,
        "releases/2.0.0.tar.gz.sha256",
        format!("{wrong}  2.0.0.tar.gz\n").as_bytes(),
    );
    world.promote("2.0.0");

    let rejected = instance.wait_for_events("artifact_rejected", 1, DEPLOY);
    let error = field(&rejected[0], "ERROR");
    assert!(error.contains("sha256 mismatch"), "{error}");
    assert!(error.contains("releases/2.0.0.tar.gz"), "{error}");
    assert!(error.contains(&wrong), "{error}");
    assert_eq!(field(&rejected[0], "VERSION"), "2.0.0");
    assert_eq!(field(&rejected[0], "PRIORITY"), "3");
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(current(&instance), "releases/1.0.0");
    assert!(!instance.path("/opt/app/releases/2.0.0").exists());
    instance.assert_staging_empty();
    assert_eq!(instance.status_json()["last"]["result"], "rejected");
    assert_eq!(events_for(&instance, "switched", "2.0.0"), 0);
}

#[test]
fn traversal_entry_rejects_the_artifact_and_nothing_is_written_outside() {
    let world = World::new("traversal");
    let instance = world.boot_instance();
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);

    let evil = drover_tests::release::escaping_tarball(&world.artifacts_dir(), "2.0.0");
    // drover publish refuses it; someone who can write to the bucket need not ask.
    world.upload("2.0.0", &evil);
    world.promote("2.0.0");

    let rejected = instance.wait_for_events("artifact_rejected", 1, DEPLOY);
    let error = field(&rejected[0], "ERROR");
    assert!(error.contains("../escape.txt"), "{error}");
    assert!(error.contains(".."), "{error}");
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(current(&instance), "releases/1.0.0");
    assert!(!instance.path("/opt/app/releases/2.0.0").exists());
    let found = instance.exec_ok(&["find", "/", "-xdev", "-name", "escape.txt"]);
    assert_eq!(found.trim(), "", "escape.txt was written");
    instance.assert_staging_empty();
}

#[test]
fn agent_restarted_while_idle_resumes_without_redeploying() {
    let world = World::new("restart_idle");
    let instance = world.boot_instance();
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);
    let app_pid = instance.unit_property("app.service", "MainPID");
    let agent_pid = instance.unit_property("drover.service", "MainPID");

    instance.exec_ok(&["systemctl", "restart", "drover.service"]);
    let new_pid = wait_for(Duration::from_secs(10), "drover to come back", || {
        let pid = instance.unit_property("drover.service", "MainPID");
        let active = instance.unit_property("drover.service", "ActiveState") == "active";
        (active && pid != agent_pid && pid != "0").then_some(pid)
    });
    assert_ne!(new_pid, agent_pid);
    std::thread::sleep(Duration::from_secs(4)); // several polls
    assert_eq!(
        instance.journal_events("deploy_started").len(),
        1,
        "nothing redeployed"
    );
    assert_eq!(
        instance.unit_property("app.service", "MainPID"),
        app_pid,
        "the app was not restarted"
    );
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(instance.status_json()["good"], "1.0.0");
    // READY=1 made the unit active; STATUS= says what runs (`systemctl status drover`).
    assert_eq!(
        instance.unit_property("drover.service", "StatusText"),
        "running 1.0.0; last pass: in sync"
    );

    // `drover doctor` on the instance: the bus, the unit and the artifact are all reachable.
    // As an operator would on an instance whose credentials come from the unit's environment
    // file (on EC2 they come from the instance profile).
    let doctor = instance.exec(&[
        "sh",
        "-c",
        "set -a; . /etc/default/drover; exec drover doctor",
    ]);
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{report}");
    assert!(
        report.contains("ok    unit app.service: loaded"),
        "{report}"
    );
    assert!(
        report.contains("releases/1.0.0.tar.gz: readable"),
        "{report}"
    );

    // And it still deploys.
    world.release("2.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, DEPLOY);
    assert_eq!(field(&deployed[1], "VERSION"), "2.0.0");
    assert_eq!(instance.served(), "2.0.0");
}

/// Eight deploys back to back, each promoted as soon as the last is deployed: more app starts
/// than systemd's default start limit allows in 10 s (5). drover clears the limit before each of
/// its restarts, so none is refused; then a failing release still reverts cleanly.
#[test]
fn back_to_back_deploys_are_not_refused_by_the_start_limit() {
    let world = World::new("rapid");
    let instance = world.boot_instance();
    let started = std::time::Instant::now();
    for (n, version) in ["1", "2", "3", "4", "5", "6", "7", "8"].iter().enumerate() {
        world.release(version, true);
        let deployed = instance.wait_for_events("deployed", n + 1, DEPLOY);
        assert_eq!(field(&deployed[n], "VERSION"), *version);
    }
    let took = started.elapsed();
    assert_eq!(instance.served(), "8");
    assert!(instance.journal_events("health_failed").is_empty());
    eprintln!("8 deploys in {took:.1?}");

    world.release("9", false);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(field(&reverted[0], "VERSION"), "9");
    assert_eq!(instance.served(), "8");
    assert!(instance.journal_events("revert_failed").is_empty());
}
