//! The operator's side of issue 18 on the command line, through the real SDK against moto (and
//! the fault proxy, for what AWS does that moto does not): `publish` and `promote` refuse what
//! instances could not deploy and upload or change nothing; a missing bucket, missing
//! credentials, a refusal, an unreachable endpoint and a bucket in another region each get their
//! own message and fix, in the CLI and in `doctor`; and the operator's config comes from
//! `DROVER_CONFIG`, flags and `config.d` drop-ins.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Output;
use std::sync::Arc;

use drover_tests::faultproxy::{Fault, FaultProxy, Match};
use drover_tests::host::{drover_command, stderr, stdout, Host};
use drover_tests::regions::OtherRegion;
use drover_tests::world::AWS_ENV;
use drover_tests::World;

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// No Rust debug form ever reaches an operator.
fn no_debug_dump(text: &str) {
    for dump in [
        "Error {",
        "ProviderError(",
        "DispatchFailure(",
        "ServiceError {",
        "Some(",
    ] {
        assert!(!text.contains(dump), "a debug dump ({dump}) in: {text}");
    }
}

/// The keys under `releases/` of `world`'s bucket that start with `version`.
fn uploaded(world: &World, version: &str) -> Vec<String> {
    ["", ".sha256", ".minisig"]
        .iter()
        .map(|ext| format!("releases/{version}.tar.gz{ext}"))
        .filter(|key| world.moto.get_object(&world.bucket, key).is_some())
        .collect()
}

#[test]
fn promote_refuses_an_unpublished_version_and_says_what_changes() {
    let host = Host::new("promote_guard");
    let world = &host.world;
    let out = host.drover(&["promote", "9.9.9"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    for words in [
        "refusing to promote 9.9.9",
        "releases/9.9.9.tar.gz not found",
        "releases/9.9.9.tar.gz.sha256 not found",
        "--force",
        "is unchanged",
    ] {
        assert!(said.contains(words), "{words:?} not in: {said}");
    }
    assert_eq!(world.moto.get_parameter(&world.parameter), None);

    let tarball = world.app_tarball("1.0.0", true);
    let out = host.drover(&["publish", "--version", "1.0.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = host.drover(&["promote", "1.0.0", "--dry-run"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would change")
            && stdout(&out).contains("nothing (the parameter does not exist yet) -> 1.0.0"),
        "{}",
        stdout(&out)
    );
    assert_eq!(world.moto.get_parameter(&world.parameter), None);

    let out = host.drover(&["promote", "1.0.0"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("-> 1.0.0 (parameter version 1), all instances at their next poll"),
        "{}",
        stdout(&out)
    );
    // Only the artifact, without its digest: still refused.
    world
        .moto
        .put_object(&world.bucket, "releases/2.0.0.tar.gz", b"x");
    let out = host.drover(&["promote", "2.0.0", "--rollout", r#"{"duration":"30m"}"#]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("releases/2.0.0.tar.gz.sha256 not found"),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("releases/2.0.0.tar.gz not found"),
        "{}",
        stderr(&out)
    );
    // --force takes the operator's word for it, and says what changed.
    let out = host.drover(&["promote", "2.0.0", "--force"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("1.0.0 (parameter version 1) -> 2.0.0 (parameter version 2)"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn publish_refuses_what_an_instance_would_reject_and_uploads_nothing() {
    let host = Host::with_artifact_keys(
        World::new("publish_guard"),
        &drover_tests::Moto::shared().endpoint(),
        "max_unpacked_size = \"64KiB\"",
        "",
    );
    let world = &host.world;
    // A build output that is not an archive (a shell script, say).
    let script = world.dir().join("app.sh");
    std::fs::write(&script, "#!/bin/sh\necho hello\n").unwrap();
    let out = host.drover(&["publish", "--version", "1.0.1", &script.to_string_lossy()]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains("refusing to publish 1.0.1"), "{said}");
    assert!(said.contains("nothing was uploaded"), "{said}");
    assert!(uploaded(world, "1.0.1").is_empty());

    // A directory whose files add up to more than the instances' max_unpacked_size.
    let big = world.dir().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("blob"), vec![7u8; 100 << 10]).unwrap();
    let out = host.drover(&["publish", "--version", "1.0.1", &big.to_string_lossy()]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refusing to publish 1.0.1"),
        "{}",
        stderr(&out)
    );
    assert!(uploaded(world, "1.0.1").is_empty());

    // The version was not burned: a good release takes it, after a dry run that uploads nothing.
    let good = drover_tests::release::app_dir(&world.artifacts_dir(), "1.0.1", true);
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.1",
        "--dry-run",
        &good.to_string_lossy(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("would publish s3://"),
        "{}",
        stdout(&out)
    );
    assert!(uploaded(world, "1.0.1").is_empty());
    let out = host.drover(&["publish", "--version", "1.0.1", &good.to_string_lossy()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(uploaded(world, "1.0.1").len(), 2);

    // Another publish of 1.0.2 got its digest in first (a CI job run twice): this one stops at
    // its first upload instead of putting its tarball beside the other's digest.
    world
        .moto
        .put_object(&world.bucket, "releases/1.0.2.tar.gz.sha256", b"theirs");
    let out = host.drover(&["publish", "--version", "1.0.2", &good.to_string_lossy()]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another publish of 1.0.2 got there first"),
        "{}",
        stderr(&out)
    );
    assert_eq!(uploaded(world, "1.0.2"), ["releases/1.0.2.tar.gz.sha256"]);
}

#[test]
fn operator_commands_need_no_config_file_given_flags() {
    let world = World::new("flags");
    let endpoint = world.moto.endpoint();
    let tarball = world.app_tarball("3.1.0", true);
    let flags = |args: &[&str]| -> Output {
        std::process::Command::new(drover_tests::drover_bin())
            .args(args)
            .args(["--bucket", &world.bucket, "--parameter", &world.parameter])
            .args(["--region", "us-east-1", "--endpoint-url", &endpoint])
            .env("DROVER_CONFIG", world.dir().join("absent.toml"))
            .envs(AWS_ENV)
            .output()
            .unwrap()
    };
    let out = flags(&["publish", "--version", "3.1.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = flags(&["promote", "3.1.0"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        world.moto.get_parameter(&world.parameter),
        Some(("3.1.0".into(), 1))
    );
    let out = flags(&[
        "fleet",
        "status",
        "--status-prefix",
        "drover/status/",
        "--json",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let fleet: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (&fleet["schema"], &fleet["version"]),
        (&1.into(), &"3.1.0".into())
    );

    // Without --bucket there is nothing to go on: a usage error that says what to give.
    let out = std::process::Command::new(drover_tests::drover_bin())
        .args(["promote", "3.1.0", "--region", "us-east-1"])
        .env("DROVER_CONFIG", world.dir().join("absent.toml"))
        .envs(AWS_ENV)
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("absent.toml") && stderr(&out).contains("--bucket"),
        "{}",
        stderr(&out)
    );

    // doctor reports the missing config as its failed check, with what to do.
    let out = std::process::Command::new(drover_tests::drover_bin())
        .arg("doctor")
        .env("DROVER_CONFIG", world.dir().join("absent.toml"))
        .output()
        .unwrap();
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.contains("FAIL  config: cannot read config") && said.contains("absent.toml"),
        "{said}"
    );
    assert!(said.contains("fix: write it"), "{said}");

    // Flags win over the file.
    let host = Host::with_artifact_keys(World::new("flags_win"), &endpoint, "", "");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace(&host.world.bucket, "no-such-bucket-here"),
    )
    .unwrap();
    let tarball = host.world.app_tarball("1.0.0", true);
    let out = host.drover(&["publish", "--version", "1.0.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let out = host.drover(&[
        "publish",
        "--version",
        "1.0.0",
        "--bucket",
        &host.world.bucket,
        &tarball.to_string_lossy(),
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
}

#[test]
fn drop_ins_merge_over_the_main_file_in_name_order() {
    let host = Host::new("dropins");
    let world = &host.world;
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, text.replace(&world.bucket, "wrong-bucket")).unwrap();
    let dir = host.config.with_extension("d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("10-bucket.toml"),
        "[artifact]\nbucket = \"wrong-again\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("20-bucket.toml"),
        format!("[artifact]\nbucket = \"{}\"\n", world.bucket),
    )
    .unwrap();
    std::fs::write(dir.join("30-keep.toml"), "[release]\nkeep = 4\n").unwrap();
    std::fs::write(dir.join("README"), "not a drop-in").unwrap();

    let tarball = world.app_tarball("1.2.0", true);
    let out = host.drover(&["publish", "--version", "1.2.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("s3://{}/", world.bucket)));

    let out = host.drover(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schema"], 1);
    let files: Vec<String> = report["config"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(
        files,
        [
            "host.toml",
            "10-bucket.toml",
            "20-bucket.toml",
            "30-keep.toml"
        ]
    );
    assert_eq!(
        report["config"]["merged"]["artifact"]["bucket"],
        world.bucket.as_str()
    );
    assert_eq!(report["config"]["merged"]["release"]["keep"], 4);
    assert_eq!(
        report["config"]["merged"]["release"]["root"],
        host.root().to_str().unwrap()
    );

    // An unknown key in a drop-in names the drop-in.
    std::fs::write(dir.join("40-typo.toml"), "[artifact]\nbukket = \"x\"\n").unwrap();
    let out = host.drover(&["status"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("40-typo.toml") && stderr(&out).contains("bukket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_missing_bucket_is_not_a_missing_object() {
    let host = Host::new("no_bucket");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(
        &host.config,
        text.replace(&host.world.bucket, "drover-no-such-bucket"),
    )
    .unwrap();
    let tarball = host.world.app_tarball("1.0.0", true);
    for args in [
        vec!["publish", "--version", "1.0.0", tarball.to_str().unwrap()],
        vec!["promote", "1.0.0"],
    ] {
        let out = host.drover(&args);
        assert_eq!(code(&out), Some(1), "{args:?}: {}", stderr(&out));
        let said = stderr(&out);
        assert!(
            said.contains("bucket drover-no-such-bucket does not exist"),
            "{args:?}: {said}"
        );
        assert!(
            said.contains("fix: check [artifact] bucket"),
            "{args:?}: {said}"
        );
        assert!(!said.contains("not found"), "{args:?}: {said}");
    }
    // An instance that polls it says so too.
    host.world
        .moto
        .put_parameter(&host.world.parameter, "1.0.0");
    let out = host.drover(&["once"]);
    assert_eq!(code(&out), Some(1));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    // With the digest in the parameter, its first call is a HeadObject, whose bare 404 a
    // listing tells apart.
    let digest = "0".repeat(64);
    let value = format!("{{\"version\":\"1.0.0\",\"sha256\":\"{digest}\"}}");
    host.world.moto.put_parameter(&host.world.parameter, &value);
    let out = host.drover(&["once"]);
    assert_eq!(code(&out), Some(1));
    assert!(
        stderr(&out).contains("bucket drover-no-such-bucket does not exist"),
        "{}",
        stderr(&out)
    );
    let out = host.drover(&["doctor"]);
    let said = stdout(&out);
    assert!(
        said.contains(
            "FAIL  bucket drover-no-such-bucket: bucket drover-no-such-bucket does not exist"
        ),
        "{said}"
    );
    assert!(!said.contains("fix: publish it"), "{said}");
}

#[test]
fn missing_credentials_are_named_with_the_chain_tried() {
    let host = Host::new("no_credentials");
    let home = host.world.dir().join("home");
    std::fs::create_dir(&home).unwrap();
    let closed = format!("http://127.0.0.1:{}", drover_tests::free_port());
    for args in [&["promote", "1.0.0", "--force"][..], &["doctor"][..]] {
        let out = drover_command(&host.config, args)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("HOME", &home)
            // The instance metadata service is the last source of the chain: not here.
            .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &closed)
            .output()
            .unwrap();
        assert_eq!(code(&out), Some(1), "{args:?}: {}", stderr(&out));
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(
            said.contains("no AWS credentials were found (tried: "),
            "{said}"
        );
        assert!(
            said.contains("Environment:") || said.contains("environment"),
            "{said}"
        );
        assert!(said.contains("instance profile"), "{said}");
        no_debug_dump(&said);
    }
}

#[test]
fn access_denied_names_the_action_and_resource() {
    let world = World::new("denied");
    let proxy = FaultProxy::in_front_of_moto();
    let host = Host::with_config(world, &proxy.endpoint(), "");
    host.world.release("1.0.0", true);
    proxy.inject_always(Match::ssm("PutParameter"), Fault::Denied);
    let out = host.drover(&["promote", "1.0.0"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "access denied: ssm:PutParameter on parameter {}",
            host.world.parameter
        )),
        "{said}"
    );
    assert!(said.contains("fix: allow ssm:PutParameter"), "{said}");
    no_debug_dump(&said);

    // A publisher that may put the parameter but not read it: refused, unless forced.
    proxy.clear();
    proxy.inject_always(Match::ssm("GetParameter"), Fault::Denied);
    let out = host.drover(&["promote", "1.0.0"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("access denied: ssm:GetParameter"),
        "{}",
        stderr(&out)
    );
    let out = host.drover(&["promote", "1.0.0", "--force"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(": unknown (access denied: ssm:GetParameter"),
        "{}",
        stdout(&out)
    );

    proxy.clear();
    proxy.inject_always(Match::s3_get(".tar.gz"), Fault::Denied);
    let out = host.drover(&["once"]);
    assert_eq!(code(&out), Some(1));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "access denied: s3:GetObject on s3://{}/releases/1.0.0.tar.gz",
            host.world.bucket
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "allow s3:GetObject on arn:aws:s3:::{}/releases/1.0.0.tar.gz",
            host.world.bucket
        )),
        "{said}"
    );
}

#[test]
fn an_unreachable_endpoint_is_named() {
    let world = World::new("unreachable");
    let closed = format!("http://127.0.0.1:{}", drover_tests::free_port());
    let host = Host::with_config(world, &closed, "");
    let out = host.drover(&["promote", "1.0.0", "--force"]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(said.contains(&format!("cannot reach {closed}")), "{said}");
    assert!(said.contains("fix: check the endpoint"), "{said}");
    no_debug_dump(&said);
    let out = host.drover(&["doctor"]);
    assert!(
        stdout(&out).contains(&format!("cannot reach {closed}")),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_bucket_in_another_region_says_which() {
    let world = World::new("other_region");
    let proxy = FaultProxy::with_front(Arc::new(OtherRegion {
        bucket: world.bucket.clone(),
        region: "eu-west-1".into(),
    }));
    let host = Host::with_config(world, &proxy.endpoint(), "");
    let tarball = host.world.app_tarball("1.0.0", true);
    let out = host.drover(&["publish", "--version", "1.0.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains(&format!(
            "bucket {} is not in us-east-1 but in eu-west-1",
            host.world.bucket
        )),
        "{said}"
    );
    assert!(
        said.contains("fix: set [aws] region = \"eu-west-1\" (or --region eu-west-1)"),
        "{said}"
    );
    let out = host.drover(&["doctor"]);
    assert!(
        stdout(&out).contains("but in eu-west-1"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn status_shows_what_the_parameter_asks_for_with_a_schema_and_rfc3339_times() {
    let world = World::new("status_schema");
    let endpoint = world.moto.endpoint();
    let host = Host::with_config(
        world,
        &endpoint,
        "[fleet]\nstatus_prefix = \"drover/status/\"\n",
    );
    host.world.release("1.0.0", true);
    let out = host.drover(&["once"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    host.world.promote("2.0.0");

    let status = host.status();
    assert_eq!(status["schema"], 1);
    assert_eq!(status["current"], "1.0.0");
    assert_eq!(status["desired"]["version"], "2.0.0");
    assert_eq!(status["desired"]["value"], "2.0.0");
    assert_eq!(status["desired"]["parameter_version"], 2);
    let at = status["last"]["at"].as_str().unwrap_or_default();
    assert!(
        drover::rfc3339::parse(at).is_some(),
        "last.at {at:?} is not RFC 3339"
    );
    // Without [environment], no "environment" at all (README: left out, not null).
    assert!(status.get("environment").is_none(), "{status}");
    let text = stdout(&host.drover(&["status"]));
    assert!(
        text.starts_with("desired:  2.0.0 (parameter version 2)\ncurrent:  1.0.0\n"),
        "{text}"
    );

    let fleet = host.drover(&["fleet", "status", "--json"]);
    assert_eq!(code(&fleet), Some(0), "{}", stderr(&fleet));
    let fleet: serde_json::Value = serde_json::from_slice(&fleet.stdout).unwrap();
    assert_eq!(fleet["schema"], 1);

    let version = stdout(&host.drover(&["--version"]));
    let expected = format!("drover {} (commit ", crate::packages::cargo_version());
    assert!(
        version.starts_with(&expected) && version.trim_end().ends_with(')'),
        "{version}"
    );
}

/// A version forced into the parameter before its artifact exists: the daemon says so once (one
/// `deploy_started`, one `poll_failed`) however often it polls, and deploys once it is there.
#[test]
fn a_missing_artifact_is_said_once_per_request_not_every_poll() {
    let host = Host::new("said_once");
    let world = &host.world;
    world.promote("5.0.0");
    let log = world.dir().join("daemon.log");
    let mut daemon = host
        .command(&["run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    // poll_interval is 1 s: five polls or so.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let said = text();
    assert_eq!(
        said.matches("event=\"deploy_started\"").count(),
        1,
        "{said}"
    );
    assert_eq!(said.matches("event=\"poll_failed\"").count(), 1, "{said}");
    let tarball = world.app_tarball("5.0.0", true);
    let out = host.drover(&["publish", "--version", "5.0.0", &tarball.to_string_lossy()]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    drover_tests::wait_until(std::time::Duration::from_secs(20), "5.0.0 deployed", || {
        text().contains("event=\"deployed\"")
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert_eq!(host.current(), "releases/5.0.0");
}
