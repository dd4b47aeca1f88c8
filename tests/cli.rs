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
        stderr(&out).contains("is writable by group or others (mode 0666)")
            && stderr(&out).contains("chmod go-w"),
        "{}",
        stderr(&out)
    );

    assert_eq!(host.drover(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(host.drover(&["publish"]).status.code(), Some(2));
}

/// `drover sandbox-paths` prints drover.service's drop-in for the config's paths, and refuses
/// (exit 2, naming the key) a path that cannot go into it as it is. The container test
/// (`sandbox.rs`) installs what it prints.
#[test]
fn sandbox_paths_prints_the_drop_in_or_refuses_naming_the_key() {
    let host = Host::new("sandboxpaths");
    let config = host.world.dir().join("paths.toml");
    let write = |text: &str| {
        std::fs::write(&config, format!("[artifact]\nbucket = \"b\"\n{text}")).unwrap()
    };
    write("[release]\nroot = \"/srv/app\"\n[agent]\nstate_dir = \"/srv/state\"\n");
    let out = drover_with(&config, &["sandbox-paths"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("for {} ", config.display())),
        "{text}"
    );
    let settings: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        settings,
        [
            "[Service]",
            "ExecStartPre=",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0755 /srv/app",
            "ExecStartPre=+/usr/bin/mkdir -p -m 0700 /srv/state",
            "StateDirectory=",
            "ReadWritePaths=",
            "ReadWritePaths=-/srv/app -/srv/state",
            "ReadWritePaths=-/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter",
        ]
    );
    for (text, says) in [
        (
            "[release]\nroot = \"/srv/my app\"\n",
            "release.root \"/srv/my app\": ' ' cannot go into drover.service's drop-in",
        ),
        (
            "[agent]\nstate_dir = \"/tmp/drover\"\n",
            "agent.state_dir /tmp/drover: drover.service hides /tmp",
        ),
        (
            "[release]\nroot = \"/srv/../etc\"\n",
            "key release.root: /srv/../etc has a \"..\"",
        ),
    ] {
        write(text);
        let out = drover_with(&config, &["sandbox-paths"]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(stdout(&out).is_empty(), "{text}: printed {}", stdout(&out));
        assert!(stderr(&out).contains(says), "{text}: {}", stderr(&out));
    }
}

/// Issue 13, finding 7: whoever can change the config can deploy anything as root. A config
/// that someone other than root could have written, or reached through a link, is refused by
/// every command (exit 2), naming the file or directory at fault and the fix.
#[test]
fn a_config_that_others_could_have_written_is_refused() {
    use std::os::unix::fs::{chown, symlink, PermissionsExt};
    let host = Host::new("untrusted-config");
    let mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let copy = |name: &str| {
        let path = host.world.dir().join(name);
        std::fs::copy(&host.config, &path).unwrap();
        path
    };
    let refused = |config: &Path, at: &Path, why: &str, fix: &str| {
        let what = format!(
            "config {} is not safe to act on: {} {why}",
            config.display(),
            at.display()
        );
        for args in [&["once"][..], &["status"], &["promote", "1.0.0"]] {
            let out = drover_with(config, args);
            let e = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {e}");
            assert!(e.contains(&what), "{args:?}: {e} lacks {what:?}");
            assert!(e.contains(fix), "{args:?}: {e} lacks {fix:?}");
        }
    };
    // The harness's own config passes: root's, 0644, in a 0700 directory under a sticky /tmp.
    assert_eq!(host.drover(&["status"]).status.code(), Some(0));

    let group = copy("group.toml");
    mode(&group, 0o664);
    refused(
        &group,
        &group,
        "is writable by group or others (mode 0664)",
        &format!(
            "Fix: chown root:root {0} && chmod go-w {0}",
            group.display()
        ),
    );

    let theirs = copy("theirs.toml");
    chown(&theirs, Some(65534), Some(65534)).unwrap();
    refused(
        &theirs,
        &theirs,
        "is owned by uid 65534, not root",
        &format!(
            "Fix: chown root:root {0} && chmod go-w {0}",
            theirs.display()
        ),
    );

    // A link to a good config: whoever placed it chose what root reads.
    let link = host.world.dir().join("link.toml");
    symlink(&host.config, &link).unwrap();
    refused(&link, &link, "is a symbolic link", "realpath");

    // A good config in a directory others can write to (and so replace the file in).
    let shared = host.world.dir().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let inside = shared.join("drover.toml");
    std::fs::copy(&host.config, &inside).unwrap();
    mode(&shared, 0o775);
    refused(
        &inside,
        &shared,
        "is writable by group or others (mode 0775)",
        &format!("chmod go-w {}", shared.display()),
    );
    // Put right, it is accepted; and so through a link to its directory that only root could
    // have placed.
    mode(&shared, 0o755);
    assert_eq!(drover_with(&inside, &["status"]).status.code(), Some(0));
    let via = host.world.dir().join("via");
    symlink(&shared, &via).unwrap();
    let out = drover_with(&via.join("drover.toml"), &["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // doctor says it as a failed check, and checks nothing else with such a config.
    let out = drover_with(&group, &["doctor"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.starts_with(&format!(
            "FAIL  config: {0} is not safe to act on: {0} is writable",
            group.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "fix: chown root:root {0} && chmod go-w {0}",
            group.display()
        )),
        "{text}"
    );
    assert!(text.ends_with("1 of 1 checks failed\n"), "{text}");

    // An operator's own config, for the commands run as that operator: theirs is fine for them.
    mode(host.world.dir(), 0o755);
    let operator = host.world.dir().join("operator");
    std::fs::create_dir(&operator).unwrap();
    chown(&operator, Some(65534), Some(65534)).unwrap();
    let own = operator.join("drover.toml");
    std::fs::copy(&host.config, &own).unwrap();
    chown(&own, Some(65534), Some(65534)).unwrap();
    let as_nobody = |config: &Path| {
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(drover_tests::drover_bin())
            .arg("--config")
            .arg(config)
            .args(["promote", "--rollout", "{", "1.0.0"]);
        cmd.output().unwrap()
    };
    // Past the config (the bad --rollout is what stops it: exit 1), without touching AWS.
    let out = as_nobody(&own);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
    // Root's is too; but not one others can write.
    let roots = operator.join("root.toml");
    std::fs::copy(&host.config, &roots).unwrap();
    assert_eq!(as_nobody(&roots).status.code(), Some(1));
    mode(&roots, 0o666);
    let out = as_nobody(&roots);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Fix: chown 65534 "),
        "{}",
        stderr(&out)
    );
}

/// Issue 13, finding 8: with `[release] owner`, the owner can rewrite the release's hooks, so
/// they run as the owner, never as root: `[hooks] user` naming root (any spelling) with an
/// owner is refused (exit 2) before anything is fetched.
#[test]
fn hooks_run_as_the_release_owner_never_as_root_over_its_files() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::new("hooks-owner");
    // The hook, as nobody, must be able to reach its release directory.
    std::fs::set_permissions(host.world.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let with = |name: &str, hooks_user: Option<&str>| {
        let mut text = std::fs::read_to_string(&host.config)
            .unwrap()
            .replace("keep = 2", "keep = 2\nowner = \"nobody\"");
        if let Some(user) = hooks_user {
            text += &format!("[hooks]\nuser = \"{user}\"\n");
        }
        let path = host.world.dir().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let dir = drover_tests::release::app_dir(&host.world.artifacts_dir(), "1.0.0", true);
    let hook = dir.join("hooks/pre-activate");
    std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
    std::fs::write(&hook, "#!/bin/sh\necho \"pre-activate as $(id -un)\"\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    host.world.publish("1.0.0", &dir);
    host.world.promote("1.0.0");

    for root in ["root", "0", "0:0", "root:nogroup"] {
        let config = with("root-hooks.toml", Some(root));
        for command in ["once", "doctor"] {
            let out = drover_with(&config, &[command]);
            let text = stderr(&out) + &stdout(&out);
            assert_eq!(out.status.code(), Some(2), "{root} {command}: {text}");
            assert!(
                text.contains(&format!("key hooks.user: \"{root}\" is root (uid 0)"))
                    && text.contains("release.owner \"nobody\""),
                "{root} {command}: {text}"
            );
        }
    }
    assert_eq!(host.current(), "", "nothing was deployed");

    // Without [hooks] user, the hook runs as the owner.
    let out = drover_with(&with("owner.toml", None), &["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pre-activate as nobody"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.current(), "releases/1.0.0");
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
    host.drover(&["promote", "7.0", "--force"]);
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

/// The host's config with `[aws] metadata_endpoint_url` and `[fleet]` added.
fn fleet_host(label: &str, imds: &drover_tests::imds::Imds) -> Host {
    let world = drover_tests::World::new(label);
    let endpoint = world.moto.endpoint();
    fleet_host_via(world, &endpoint, imds)
}

/// [`fleet_host`] with the agent talking to `endpoint` (a fault proxy, say).
fn fleet_host_via(
    world: drover_tests::World,
    endpoint: &str,
    imds: &drover_tests::imds::Imds,
) -> Host {
    let host = Host::with_config(world, endpoint, "[fleet]\nstatus_prefix = \"status\"\n");
    let text = std::fs::read_to_string(&host.config).unwrap();
    let line = format!("endpoint_url = \"{endpoint}\"\n");
    let with_imds = text.replacen(
        &line,
        &format!("{line}metadata_endpoint_url = \"{}\"\n", imds.endpoint()),
        1,
    );
    assert_ne!(text, with_imds);
    std::fs::write(&host.config, with_imds).unwrap();
    host
}

fn status_object(host: &Host, key: &str) -> serde_json::Value {
    let body = (host.world.moto)
        .get_object(&host.world.bucket, key)
        .unwrap_or_else(|| panic!("no status object {key}"));
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn once_waits_for_its_turn_in_a_rollout_and_reports_it() {
    let imds = drover_tests::imds::Imds::start("i-0c11000000000001");
    let host = fleet_host("rollout_once", &imds);
    let key = "status/instances/i-0c11000000000001.json";
    host.world.release("1.0.0", true);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(status_object(&host, key)["outcome"], "deployed");

    // Spread over a day from now: this instance's turn is hours away.
    let v2 = drover::version::Version::parse("2.0.0").unwrap();
    let position = drover::rollout::position(imds.instance_id(), &v2);
    assert!(position > 0.01, "{position}");
    let tarball = host.world.app_tarball("2.0.0", true);
    host.world.publish("2.0.0", &tarball);
    let promoted = host.drover(&["promote", "2.0.0", "--rollout", r#"{"duration": "1d"}"#]);
    assert_eq!(promoted.status.code(), Some(0), "{}", stderr(&promoted));
    let out = host.drover(&["once"]);
    eprintln!("{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rollout_waiting")
            && stderr(&out).contains(&format!("position {position:.4}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.current(), "releases/1.0.0");
    let waiting = status_object(&host, key);
    assert_eq!(
        (
            &waiting["outcome"],
            &waiting["desired"],
            &waiting["running"]
        ),
        (&"waiting".into(), &"2.0.0".into(), &"1.0.0".into()),
        "{waiting:#}"
    );
    assert!(waiting["turn_at"].is_string(), "{waiting:#}");
    let doctor = stdout(&host.drover(&["doctor"]));
    assert!(
        doctor.contains(&format!(
            "ok    instance id: i-0c11000000000001: position {position:.4} for 2.0.0"
        )) && doctor.contains("reported failing 2.0.0"),
        "{doctor}"
    );
    let summary = host.drover(&["fleet", "status", "--json"]);
    assert_eq!(summary.status.code(), Some(0), "{}", stderr(&summary));
    let summary: serde_json::Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(
        (&summary["version"], &summary["waiting"]),
        (&"2.0.0".into(), &1.into())
    );

    // A rollout that started a day ago has reached everyone.
    let (_, before) = host
        .world
        .moto
        .get_parameter(&host.world.parameter)
        .unwrap();
    let bad = host.drover(&[
        "promote",
        "2.0.0",
        "--rollout",
        r#"{"waves": [{"fraction": 0.5}]}"#,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("must reach 1"), "{}", stderr(&bad));
    let (_, after) = host
        .world
        .moto
        .get_parameter(&host.world.parameter)
        .unwrap();
    assert_eq!(before, after, "a refused rollout was put");
    let started = r#"{"start": "2020-01-01T00:00:00Z", "duration": "1d"}"#;
    let out = host.drover(&["promote", "2.0.0", "--rollout", started]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/2.0.0");
    assert_eq!(status_object(&host, key)["outcome"], "deployed");
    assert!(imds.gets() >= 1);
}

#[test]
fn a_bad_rollout_or_a_missing_imds_changes_nothing_and_says_why() {
    let imds = drover_tests::imds::Imds::start("i-0c11000000000002");
    let host = fleet_host("rollout_bad", &imds);
    host.world.release("1.0.0", true);
    assert_eq!(host.drover(&["once"]).status.code(), Some(0));
    host.world
        .publish("2.0.0", &host.world.app_tarball("2.0.0", true));

    // Put by another tool, past `promote`'s check: the agent names the field and does nothing.
    let world = &host.world;
    let value = r#"{"version": "2.0.0", "rollout": {"waves": [{"fraction": 0.5, "after": "1m"}]}}"#;
    world.moto.put_parameter(&world.parameter, value);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("poll_failed") && stderr(&out).contains("rollout.waves[0].fraction"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.current(), "releases/1.0.0");

    // No metadata service (a closed port): no position, so no adoption.
    drop(imds);
    let value = r#"{"version": "2.0.0", "rollout": {"duration": "1m"}}"#;
    world.moto.put_parameter(&world.parameter, value);
    let text = std::fs::read_to_string(&host.config).unwrap();
    let closed = format!("http://127.0.0.1:{}", drover_tests::free_port());
    let at = text.find("metadata_endpoint_url").unwrap();
    let end = at + text[at..].find('\n').unwrap();
    let text = format!(
        "{}metadata_endpoint_url = \"{closed}\"{}",
        &text[..at],
        &text[end..]
    );
    std::fs::write(&host.config, &text).unwrap();
    let out = host.drover(&["once"]);
    eprintln!("{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read the instance id from IMDS"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.current(), "releases/1.0.0");

    // Without [fleet] status_prefix, `fleet status` says what to set.
    let plain = text.replace("[fleet]\nstatus_prefix = \"status\"\n", "");
    std::fs::write(&host.config, plain).unwrap();
    let out = host.drover(&["fleet", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("[fleet] status_prefix"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_failure_whose_status_object_was_lost_is_reported_again() {
    let imds = drover_tests::imds::Imds::start("i-0c11000000000003");
    let host = fleet_host("failure_again", &imds);
    host.world.release("1.0.0", true);
    assert_eq!(host.drover(&["once"]).status.code(), Some(0));
    // 2.0.0 with a digest that does not match: rejected, a failure of this request.
    let tarball = std::fs::read(host.world.app_tarball("2.0.0", true)).unwrap();
    let world = &host.world;
    world
        .moto
        .put_object(&world.bucket, "releases/2.0.0.tar.gz", &tarball);
    let wrong = format!("{}  2.0.0.tar.gz\n", sha256_hex(b"something else"));
    (world.moto).put_object(
        &world.bucket,
        "releases/2.0.0.tar.gz.sha256",
        wrong.as_bytes(),
    );
    world.promote("2.0.0");
    let (_, request) = world.moto.get_parameter(&world.parameter).unwrap();
    assert_eq!(host.drover(&["once"]).status.code(), Some(1));
    let key = format!("status/failures/2.0.0/{request}/i-0c11000000000003.json");
    assert_eq!(status_object(&host, &key)["outcome"], "rejected");

    // Lost (the agent killed before it wrote it, or S3 down then): the next start writes it.
    world.moto.delete_object(&world.bucket, &key);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("skipped_failed_version"),
        "{}",
        stderr(&out)
    );
    let again = status_object(&host, &key);
    assert_eq!(
        (&again["outcome"], &again["running"]),
        (&"rejected".into(), &"1.0.0".into()),
        "{again:#}"
    );
}

#[test]
fn an_instance_that_cannot_count_the_fleet_s_failures_does_not_adopt() {
    use drover_tests::faultproxy::{Fault, FaultProxy, Match};
    let imds = drover_tests::imds::Imds::start("i-0c11000000000004");
    let proxy = FaultProxy::in_front_of_moto();
    let host = fleet_host_via(
        drover_tests::World::new("count_denied"),
        &proxy.endpoint(),
        &imds,
    );
    host.world.release("1.0.0", true);
    assert_eq!(host.drover(&["once"]).status.code(), Some(0));
    host.world.release("2.0.0", true);
    // The listing (ListObjectsV2 is a GET of `/{bucket}/`) is refused.
    let listing = Match::s3_get(&format!("{}/", host.world.bucket));
    proxy.inject_always(listing, Fault::Denied);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot count the fleet's failures")
            && stderr(&out).contains("AccessDenied"),
        "{}",
        stderr(&out)
    );
    assert_eq!(host.current(), "releases/1.0.0");
    proxy.clear();
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/2.0.0");
}

/// Whether a process whose command line is exactly `args` runs on this host.
fn running(args: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
            String::from_utf8_lossy(&c)
                .trim_end_matches('\0')
                .replace('\0', " ")
                == args
        })
    })
}

/// Where there is no systemd (this host: no bus), hooks still run, in a process group of their
/// own that is killed when they end (a process that `setsid`s leaves it; docs/APP.md says so),
/// and drover says that the hook is not confined.
#[test]
fn hooks_run_without_systemd_in_their_process_group() {
    let host = Host::new("hooks-no-systemd");
    let err = deploy_with_hook(
        &host,
        b"#!/bin/sh\nsleep 3021 &\necho \"$DROVER_HOOK ran\"\n",
    );
    assert!(err.contains("pre-activate ran"), "{err}");
    assert!(
        err.contains("No systemd to put the pre-activate hook in a scope of its own"),
        "{err}"
    );
    assert!(!running("sleep 3021"), "the hook's child outlived it");
}

/// Issue 13 review: a hook that runs as root gets none of the app's settings, since whoever
/// writes the parameters could otherwise reach root through what an interpreter reads
/// (`PERL5OPT` here); the settings' names are in a `variables_refused` warning. A hook that runs
/// as another user gets them.
#[test]
fn a_hook_run_as_root_gets_no_settings() {
    for (user, expect_settings) in [(None, false), (Some("65534:65534"), true)] {
        let world = drover_tests::World::new("root-hook-env");
        let endpoint = world.moto.endpoint();
        let env_path = world.env_path();
        let env_file = world.dir().join("app.env");
        let hooks = user.map(|u| format!("[hooks]\nuser = \"{u}\"\n"));
        let extra = format!(
            "[environment]\npath = \"{env_path}\"\nfile = \"{}\"\n{}",
            env_file.display(),
            hooks.unwrap_or_default()
        );
        let host = Host::with_config(world, &endpoint, &extra);
        // The hook user must be able to reach its release, as it can /opt/app.
        std::fs::set_permissions(
            host.world.dir(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        host.world
            .moto
            .put_parameter(&format!("{env_path}/PERL5OPT"), "-Mwarnings");
        host.world
            .moto
            .put_parameter(&format!("{env_path}/DATABASE_URL"), "postgres://db");
        let err = deploy_with_hook(
            &host,
            b"#!/bin/sh\necho \"settings:${DATABASE_URL:-none} ${PERL5OPT:-none}\"\n",
        );
        if expect_settings {
            assert!(err.contains("settings:postgres://db -Mwarnings"), "{err}");
        } else {
            assert!(err.contains("settings:none none"), "{err}");
            let refused = err
                .lines()
                .find(|l| l.contains("event=\"variables_refused\"") && l.contains("runs as root"))
                .unwrap_or_else(|| panic!("no variables_refused for the root hook in\n{err}"));
            assert!(refused.contains("DATABASE_URL"), "{refused}");
        }
    }
}

/// Deploys 1.0.0 with `script` as its pre-activate hook, with `drover once` on a host with no
/// systemd bus, and returns what drover logged (after checking that the deploy passed).
fn deploy_with_hook(host: &Host, script: &[u8]) -> String {
    use drover_tests::release::{raw_tar_gz, RawEntry};
    let archive = raw_tar_gz(&[
        RawEntry::file("VERSION", b"1.0.0\n"),
        RawEntry::file("hooks/pre-activate", script).with_mode(0o755),
    ]);
    host.upload_and_promote("1.0.0", &archive);
    let out = host
        .command(&["once"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .expect("run drover");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    err
}
