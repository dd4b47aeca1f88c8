//! The command line against the real AWS SDK and moto, on the host: the operator commands, and
//! `drover once` / `status` / `rollback` with the SPEC's exit statuses. No units are configured
//! here (systemd is exercised in `e2e.rs`), so these run in seconds.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use drover_tests::host::{drover_command, stderr, stdout, Host};
use drover_tests::sha256_hex;
use std::path::Path;
use std::process::Output;

fn drover_with(config: &Path, args: &[&str]) -> Output {
    drover_command(config, args).output().expect("run drover")
}

#[test]
fn publish_never_overwrites_and_writes_a_sha256sum_file() {
    let host = Host::new("publish");
    let tarball = host.world.app_tarball("1.0.0", true);
    let out = host.drover(&["publish", "--version", "1.0.0", &tarball.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let digest = drover_tests::sha256_file(&tarball);
    assert!(stdout(&out).contains(&digest), "{}", stdout(&out));
    let sums = host
        .world
        .moto
        .get_object(&host.world.bucket, "releases/1.0.0.tar.gz.sha256")
        .expect("the .sha256 object");
    assert_eq!(
        String::from_utf8_lossy(&sums),
        format!("{digest}  1.0.0.tar.gz\n")
    );

    let again = host.drover(&["publish", "--version", "1.0.0", &tarball.to_string_lossy()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let bad = host.drover(&["publish", "--version", "../1", &tarball.to_string_lossy()]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("../1"), "{}", stderr(&bad));
}

#[test]
fn publish_packs_a_directory() {
    let host = Host::new("publish_dir");
    let dir = drover_tests::release::app_dir(&host.world.artifacts_dir(), "4.2", true);
    let out = host.drover(&["publish", "--version", "4.2", &dir.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    host.drover(&["promote", "4.2"]);
    let once = host.drover(&["once"]);
    assert_eq!(once.status.code(), Some(0), "{}", stderr(&once));
    let served = std::fs::read_to_string(host.root().join("current/VERSION")).expect("VERSION");
    assert_eq!(served.trim(), "4.2");
    assert!(host.root().join("current/app.py").is_file());
}

#[test]
fn once_exit_status_follows_the_outcome() {
    let host = Host::new("once");
    // No parameter yet: not running the desired version.
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    host.world.release("1.0.0", true);
    let out = host.drover(&["promote", "1.0.0"]);
    assert!(
        stdout(&out).contains("parameter version"),
        "{}",
        stdout(&out)
    );
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("event=\"deployed\""),
        "{}",
        stderr(&out)
    );
    // In sync: still 0.
    assert_eq!(host.drover(&["once"]).status.code(), Some(0));
    assert_eq!(
        std::fs::read_link(host.root().join("current")).expect("current"),
        Path::new("releases/1.0.0")
    );

    // An invalid value is reported and changes nothing.
    host.world
        .moto
        .put_parameter(&host.world.parameter, "not a version!");
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not a version!"), "{}", stderr(&out));
    assert_eq!(host.status()["current"], "1.0.0");
    assert_eq!(host.status()["last"]["result"], "invalid");

    // A digest in the JSON value that does not match: rejected, then skipped.
    let tarball = host.world.app_tarball("2.0.0", true);
    host.world.publish("2.0.0", &tarball);
    let wrong = sha256_hex(b"x");
    host.world.moto.put_parameter(
        &host.world.parameter,
        &format!(r#"{{"version":"2.0.0","sha256":"{wrong}"}}"#),
    );
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("artifact_rejected"),
        "{}",
        stderr(&out)
    );
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("skipped_failed_version"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.status()["current"], "1.0.0");

    // The right digest in the value: deployed.
    let right = drover_tests::sha256_file(&tarball);
    host.world.moto.put_parameter(
        &host.world.parameter,
        &format!(r#"{{"version":"2.0.0","sha256":"{right}"}}"#),
    );
    assert_eq!(host.drover(&["once"]).status.code(), Some(0));
    assert_eq!(host.status()["current"], "2.0.0");
    assert_eq!(host.status()["previous"], "1.0.0");

    // Rollback: back to 1.0.0, and the 2.0.0 request is not taken up again.
    let out = host.drover(&["rollback"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.status()["current"], "1.0.0");
    assert_eq!(host.status()["last"]["result"], "rolled_back");
    assert_eq!(host.drover(&["once"]).status.code(), Some(1));
    assert_eq!(host.status()["current"], "1.0.0");
    let out = host.drover(&["rollback"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no previous"), "{}", stderr(&out));
}

#[test]
fn bad_config_and_usage_exit_2_naming_the_key() {
    let host = Host::new("badconfig");
    let broken = host.world.dir().join("broken.toml");
    std::fs::write(
        &broken,
        "[artifact]\nbucket = \"b\"\n[health]\nsuccesses = 0\n",
    )
    .unwrap();
    let out = drover_with(&broken, &["once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("health.successes"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("broken.toml"), "{}", stderr(&out));

    let unknown = host.world.dir().join("unknown.toml");
    std::fs::write(&unknown, "[artifact]\nbucket = \"b\"\nbuckett = \"c\"\n").unwrap();
    let out = drover_with(&unknown, &["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("buckett"), "{}", stderr(&out));

    let missing = drover_with(Path::new("/nonexistent/drover.toml"), &["once"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("/nonexistent/drover.toml"));

    // Whoever can write the config can deploy anything as root: refused, with the fix.
    let open = host.world.dir().join("open.toml");
    std::fs::copy(&host.config, &open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = drover_with(&open, &["once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("is world-writable (mode 0666)")
            && stderr(&out).contains("chmod o-w"),
        "{}",
        stderr(&out)
    );

    assert_eq!(host.drover(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(host.drover(&["publish"]).status.code(), Some(2));
}

#[test]
fn doctor_says_what_is_wrong_and_what_to_do() {
    let host = Host::new("doctor");
    // Nothing promoted yet: notes, not failures.
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    assert!(text.contains("ok    credentials"), "{text}");
    assert!(text.contains("note  parameter"), "{text}");
    assert!(text.contains("does not exist yet"), "{text}");
    assert!(text.contains("ok    state directory"), "{text}");
    assert!(text.contains("all "), "{text}");

    // Promoted but never published: the artifact check fails and says how to fix it.
    host.drover(&["promote", "7.0"]);
    let out = host.drover(&["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ok    parameter"), "{text}");
    assert!(
        text.contains("FAIL  s3://") && text.contains("releases/7.0.tar.gz: not found"),
        "{text}"
    );
    assert!(text.contains("fix: publish it"), "{text}");

    // Published: passes again.
    let tarball = host.world.app_tarball("7.0", true);
    host.world.publish("7.0", &tarball);
    let out = host.drover(&["doctor"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // A unit on a host without a system bus: named, with the fix.
    let with_unit = host.world.dir().join("unit.toml");
    let text = std::fs::read_to_string(&host.config)
        .unwrap()
        .replace("units = []", "units = [\"app.service\"]");
    std::fs::write(&with_unit, text).unwrap();
    let out = drover_with(&with_unit, &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL  unit app.service"), "{text}");
    assert!(text.contains("system bus"), "{text}");

    // A release owner: found (root), or named with the fix.
    for (owner, line) in [
        ("root", "ok    release owner root: uid 0 gid 0"),
        (
            "no-such-user-here",
            "FAIL  release owner no-such-user-here: release.owner \"no-such-user-here\": no user",
        ),
    ] {
        let with_owner = host.world.dir().join("owner.toml");
        let text = std::fs::read_to_string(&host.config)
            .unwrap()
            .replace("keep = 2", &format!("keep = 2\nowner = \"{owner}\""));
        std::fs::write(&with_owner, text).unwrap();
        let text = stdout(&drover_with(&with_owner, &["doctor"]));
        assert!(text.contains(line), "{text}");
    }
}

#[test]
fn unpack_checks_a_local_artifact_as_an_instance_would() {
    let host = Host::new("unpack");
    let dir = host.world.artifacts_dir();
    let tarball = host.world.app_tarball("1.0.0", true);
    let digest = drover_tests::sha256_file(&tarball);
    let run = |args: &[&str]| drover_with(Path::new("/nonexistent/drover.toml"), args);
    let path = |p: &Path| p.to_string_lossy().into_owned();

    let good = dir.join("good");
    let out = run(&["unpack", "--sha256", &digest, &path(&tarball), &path(&good)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("(verified)"), "{}", stdout(&out));
    assert!(good.join("app.py").is_file());

    // The wrong digest: nothing is created.
    let wrong = dir.join("wrong");
    let out = run(&[
        "unpack",
        "--sha256",
        &sha256_hex(b"x"),
        &path(&tarball),
        &path(&wrong),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("sha256 mismatch"), "{}", stderr(&out));
    assert!(!wrong.exists());

    // A hostile archive: rejected, naming the entry, and the directory is removed again.
    let evil = drover_tests::release::escaping_tarball(&dir, "2.0.0");
    let out = run(&["unpack", &path(&evil), &path(&dir.join("evil"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("../escape.txt"), "{}", stderr(&out));
    assert!(!dir.join("evil").exists());

    // Limits from the flags (or the config), and bad flags are usage errors.
    let out = run(&[
        "unpack",
        "--max-entries",
        "1",
        &path(&tarball),
        &path(&dir.join("few")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("entry count limit of 1"),
        "{}",
        stderr(&out)
    );
    let out = run(&[
        "unpack",
        "--sha256",
        "abc",
        &path(&tarball),
        &path(&dir.join("x")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = drover_with(&host.config, &["unpack", &path(&tarball), &path(&good)]);
    assert_eq!(out.status.code(), Some(1), "DEST exists already");
    assert!(stderr(&out).contains("File exists"), "{}", stderr(&out));
}
