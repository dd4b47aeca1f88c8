//! The config file as operators write it: defaults, every section's checks, and errors that
//! name the key.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/etc/drover/config.toml"))
}

const MINIMAL: &str = "[artifact]\nbucket = \"b\"\n";

#[test]
fn hooks_environment_and_notify_sections() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.hooks.timeout, Duration::from_secs(300));
    assert!(c.environment.is_none() && c.notify.webhook_url.is_none());

    let c = parse(&format!(
        "{MINIMAL}[hooks]\ntimeout = \"30s\"\nuser = \"app:app\"\n\
         [environment]\npath = \"/app/env\"\n\
         [notify]\nwebhook_url = \"https://hooks.example.com/x\"\n"
    ))
    .unwrap();
    assert_eq!(c.hooks.timeout, Duration::from_secs(30));
    assert_eq!(c.hooks.user.as_deref(), Some("app:app"));
    let env = c.environment.unwrap();
    assert_eq!(
        (env.path.as_str(), env.file),
        ("/app/env", PathBuf::from("/var/lib/drover/app.env"))
    );

    // An empty [environment] is off; a file without a path is a mistake.
    assert!(parse(&format!("{MINIMAL}[environment]\n"))
        .unwrap()
        .environment
        .is_none());
    for (text, key) in [
        (
            "[environment]\nfile = \"/etc/app.env\"\n",
            "environment.file",
        ),
        ("[environment]\npath = \"app/env\"\n", "environment.path"),
        ("[environment]\npath = \"/app/env/\"\n", "environment.path"),
        (
            "[environment]\npath = \"/e\"\nfile = \"app.env\"\n",
            "environment.file",
        ),
        ("[hooks]\ntimeout = \"0s\"\n", "hooks.timeout"),
        ("[hooks]\nuser = \"-x\"\n", "hooks.user"),
        (
            "[notify]\nwebhook_url = \"ftp://secret@x\"\n",
            "notify.webhook_url",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
        assert!(e.contains(&format!("key {key}:")), "{text}: {e}");
        assert!(
            !e.contains("secret"),
            "the webhook URL is not repeated: {e}"
        );
    }
}

#[test]
fn hooks_never_run_as_root_over_files_the_owner_can_rewrite() {
    let config = |hooks: &str, owner: &str| {
        let mut text = MINIMAL.to_owned();
        if !owner.is_empty() {
            text += &format!("[release]\nowner = \"{owner}\"\n");
        }
        if !hooks.is_empty() {
            text += &format!("[hooks]\nuser = \"{hooks}\"\n");
        }
        parse(&text)
    };
    for root in ["root", "0", "0:0", "root:app", "0:1002", "00"] {
        let e = config(root, "app").unwrap_err().to_string();
        assert!(
            e.contains("key hooks.user:") && e.contains("release.owner \"app\""),
            "{root}: {e}"
        );
    }
    // Root over root's files, anyone without an owner, the owner itself: as before.
    for (hooks, owner) in [
        ("root", ""),
        ("0", ""),
        ("root", "root"),
        ("root", "0:app"),
        ("app", "app"),
        ("", "app"),
        ("deploy", "app"),
        ("1001", "app"),
    ] {
        assert!(config(hooks, owner).is_ok(), "{hooks:?} {owner:?}");
    }

    // A name that is uid 0 on this machine is caught where /etc/passwd is read.
    let passwd = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\n\
                  app:x:1001:1002::/home/app:/bin/sh\n";
    let uid = |spec: &str| spec_uid(spec, passwd);
    assert_eq!(uid("toor:app"), Some(0));
    assert_eq!(uid("app"), Some(1001));
    assert_eq!(uid("1500:7"), Some(1500));
    assert_eq!(uid("nobody-yet"), None);
    assert!(check_hooks_user(Some("toor"), Some("app"), uid).is_err());
    assert!(check_hooks_user(Some("toor"), Some("nobody-yet"), uid).is_err());
    assert!(check_hooks_user(Some("toor"), Some("toor"), uid).is_ok());
    assert!(check_hooks_user(Some("app"), Some("toor"), uid).is_ok());
    assert!(check_hooks_user(Some("nobody-yet"), Some("app"), uid).is_ok());
    assert!(check_hooks_user(Some("toor"), None, uid).is_ok());
    // Without /etc/passwd, only root by name or number.
    assert!(check_hooks_user(Some("toor"), Some("app"), |s| spec_uid(s, "")).is_ok());
    // Group root for a user that is not root (issue 13 review).
    assert!(check_hooks_user(Some("app:0"), Some("app"), uid).is_err());
    assert!(check_hooks_user(Some("app:root"), None, uid).is_err());
    assert!(check_hooks_user(None, Some("1001:0"), uid).is_err());
    assert!(check_hooks_user(None, Some("app:app"), uid).is_ok());
    assert!(check_hooks_user(Some("root:root"), None, uid).is_ok());
}

#[test]
fn fleet_section() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!((c.fleet.status_prefix, c.fleet.max_failures), (None, 1));
    let c = parse(&format!(
        "{MINIMAL}[fleet]\nstatus_prefix = \"drover/status/\"\nmax_failures = 3\n\
         [aws]\nmetadata_endpoint_url = \"http://127.0.0.1:1338\"\n"
    ))
    .unwrap();
    assert_eq!(c.fleet.status_prefix.as_deref(), Some("drover/status/"));
    assert_eq!(c.fleet.max_failures, 3);
    assert!(c.aws.metadata_endpoint_url.is_some());
    assert_eq!(c.fleet.max_in_flight, None);
    assert_eq!(c.fleet.lease_ttl, Duration::from_secs(900));
    let c = parse(&format!(
        "{MINIMAL}[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = \"25%\"\nlease_ttl = \"2m\"\n"
    ))
    .unwrap();
    assert_eq!(
        c.fleet.max_in_flight,
        Some(crate::lease::MaxInFlight::Fraction(0.25))
    );
    assert_eq!(c.fleet.lease_ttl, Duration::from_secs(120));
    for (text, key) in [
        ("[fleet]\nstatus_prefix = \"/s\"\n", "fleet.status_prefix"),
        (
            "[fleet]\nstatus_prefix = \"a/../b\"\n",
            "fleet.status_prefix",
        ),
        ("[fleet]\nmax_failures = 0\n", "fleet.max_failures"),
        ("[fleet]\nmax_in_flight = 1\n", "fleet.max_in_flight"),
        (
            "[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = \"half\"\n",
            "fleet.max_in_flight",
        ),
        (
            "[fleet]\nstatus_prefix = \"s/\"\nmax_in_flight = 0\n",
            "fleet.max_in_flight",
        ),
        (
            "[aws]\nmetadata_endpoint_url = \"https://x\"\n",
            "aws.metadata_endpoint_url",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
        assert!(e.contains(&format!("key {key}:")), "{text}: {e}");
    }
}

#[test]
fn loadbalancer_section() {
    assert!(parse(MINIMAL).unwrap().loadbalancer.is_none());
    let arn =
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/app/0123456789abcdef";
    let c = parse(&format!(
        "{MINIMAL}[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 8080\ndrain_timeout = \"45s\"\n"
    ))
    .unwrap();
    let lb = c.loadbalancer.unwrap();
    assert_eq!(lb.target_groups, [arn]);
    assert_eq!(lb.port, Some(8080));
    assert_eq!(lb.drain_timeout, Some(Duration::from_secs(45)));
    assert_eq!(lb.healthy_timeout, None, "the group's own pace");
    for (text, key) in [
        ("[loadbalancer]\n", "loadbalancer.target_groups"),
        (
            "[loadbalancer]\ntarget_groups = [\"app\"]\n",
            "loadbalancer.target_groups",
        ),
        (
            &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 0\n"),
            "loadbalancer.port",
        ),
        (
            &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\nport = 70000\n"),
            "loadbalancer.port",
        ),
        (
            &*format!("[loadbalancer]\ntarget_groups = [\"{arn}\"]\ndrain_timeout = \"0s\"\n"),
            "loadbalancer.drain_timeout",
        ),
    ] {
        assert_eq!(invalid_key(&format!("{MINIMAL}{text}")), key, "{text}");
    }
}

#[test]
fn defaults_follow_the_spec() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.source.parameter, "/app/current-version");
    assert_eq!(c.source.poll_interval, Duration::from_secs(30));
    assert_eq!(c.artifact.key, "releases/{version}.tar.gz");
    assert_eq!(c.release.root, PathBuf::from("/opt/app"));
    assert_eq!(c.release.keep, 5);
    assert_eq!(c.service.units, vec!["app.service".to_string()]);
    assert_eq!(c.health.successes, 3);
    assert_eq!(c.health.timeout, Duration::from_secs(60));
    assert_eq!(c.agent.state_dir, PathBuf::from("/var/lib/drover"));
}

#[test]
fn full_spec_example_parses() {
    let c = parse(
        r#"
[source]
parameter = "/app/current-version"
poll_interval = "30s"
[artifact]
bucket = "my-releases"
key = "releases/{version}.tar.gz"
[release]
root = "/opt/app"
keep = 5
[service]
units = ["app.service", "worker@1.service"]
[health]
url = "http://127.0.0.1:8080/health"
timeout = "60s"
interval = "500ms"
successes = 3
[aws]
region = "us-east-1"
endpoint_url = "http://127.0.0.1:5005"
"#,
    )
    .unwrap();
    assert_eq!(c.health.interval, Duration::from_millis(500));
    assert_eq!(c.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5005"));
    let v = crate::version::Version::parse("1.4.2").unwrap();
    assert_eq!(c.artifact.key_for(&v), "releases/1.4.2.tar.gz");
    assert!(c.artifact.binding(&v).file_name_carries_version);
}

#[test]
fn a_file_name_binds_the_version_only_when_it_carries_it() {
    let v = crate::version::Version::parse("2.0").unwrap();
    for (key, carries) in [
        ("releases/{version}.tar.gz", true),
        ("{version}.tgz", true),
        ("app/app-{version}.tar.gz", true),
        ("releases/{version}/app.tar.gz", false),
        ("{version}/app.tar.gz", false),
        ("{version}/{version}/app.tar.gz", false),
    ] {
        let c = parse(&format!("{MINIMAL}key = \"{key}\"\n")).unwrap();
        let b = c.artifact.binding(&v);
        assert_eq!(b.file_name_carries_version, carries, "{key}");
        assert_eq!(b.key, key.replace("{version}", "2.0"));
        assert_eq!(b.version, "2.0");
    }
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key.to_string(),
        other => panic!("expected an invalid key, got {other:?}"),
    }
}

#[test]
fn errors_name_the_key() {
    assert_eq!(invalid_key(""), "artifact");
    assert_eq!(invalid_key("[artifact]\n"), "artifact.bucket");
    assert_eq!(
        invalid_key(&format!("{MINIMAL}key = \"x.tgz\"")),
        "artifact.key"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[source]\npoll_interval = \"30\"")),
        "source.poll_interval"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[source]\npoll_interval = \"0s\"")),
        "source.poll_interval"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[release]\nkeep = 1")),
        "release.keep"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[release]\nroot = \"opt\"")),
        "release.root"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[service]\nunits = [\"app\"]")),
        "service.units"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[health]\nsuccesses = 0")),
        "health.successes"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}[health]\nurl = \"ftp://x\"")),
        "health.url"
    );
    assert_eq!(
        invalid_key(&format!("{MINIMAL}trusted_keys = [\"RWQ\"]")),
        "artifact.trusted_keys"
    );
}

#[test]
fn paths_are_absolute_normalized_and_not_the_root_directory() {
    let c = parse(&format!(
        "{MINIMAL}[release]\nroot = \"/srv//app/./\"\n[agent]\nstate_dir = \"/srv/state/\"\n\
         [environment]\npath = \"/e\"\nfile = \"/etc/app//app.env\"\n"
    ))
    .unwrap();
    assert_eq!(c.release.root, PathBuf::from("/srv/app"));
    assert_eq!(c.agent.state_dir, PathBuf::from("/srv/state"));
    assert_eq!(
        c.environment.unwrap().file,
        PathBuf::from("/etc/app/app.env")
    );
    for (text, key, says) in [
        (
            "[release]\nroot = \"/srv/../etc\"\n",
            "release.root",
            "\"..\"",
        ),
        (
            "[release]\nroot = \"/\"\n",
            "release.root",
            "root directory",
        ),
        (
            "[release]\nroot = \"//\"\n",
            "release.root",
            "root directory",
        ),
        (
            "[agent]\nstate_dir = \"/var/lib/..\"\n",
            "agent.state_dir",
            "\"..\"",
        ),
        (
            "[agent]\nstate_dir = \"var/lib/drover\"\n",
            "agent.state_dir",
            "absolute",
        ),
        (
            "[environment]\npath = \"/e\"\nfile = \"/etc/app/../app.env\"\n",
            "environment.file",
            "\"..\"",
        ),
    ] {
        let e = parse(&format!("{MINIMAL}{text}")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("key {key}:")) && e.contains(says),
            "{text}: {e}"
        );
    }
}

#[test]
fn unknown_keys_are_named_with_the_file() {
    let err = parse(&format!("{MINIMAL}[health]\nurll = \"x\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/etc/drover/config.toml"), "{err}");
    assert!(err.contains("urll"), "{err}");
    let err = parse(&format!("{MINIMAL}[healthh]\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("healthh"), "{err}");
}

#[test]
fn metrics_section() {
    assert!(parse(MINIMAL).unwrap().metrics.textfile.is_none());
    assert!(parse(&format!("{MINIMAL}[metrics]\n"))
        .unwrap()
        .metrics
        .textfile
        .is_none());
    let path = "/var/lib/node_exporter/textfile_collector/drover.prom";
    let c = parse(&format!("{MINIMAL}[metrics]\ntextfile = \"{path}\"\n")).unwrap();
    assert_eq!(c.metrics.textfile, Some(PathBuf::from(path)));
    // Its directory need not exist yet: node_exporter may come later (each write says so).
    for bad in [
        "drover.prom",
        "/var/lib/node_exporter/textfile_collector/drover.txt",
        "/var/lib/node_exporter/textfile_collector/",
        "/var/lib/node_exporter/textfile_collector/.prom",
    ] {
        let e = parse(&format!("{MINIMAL}[metrics]\ntextfile = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("key metrics.textfile:"), "{bad}: {e}");
    }
    let e = parse(&format!("{MINIMAL}[metrics]\npath = \"/x.prom\"\n")).unwrap_err();
    assert!(e.to_string().contains("unknown field `path`"), "{e}");
}
