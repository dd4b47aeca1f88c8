//! The `.deb` that `make dist` builds, installed with `dpkg -i` on a test instance where
//! cloud-init installed nothing: it waits for a config without failing, refuses a bad one without
//! restarting in a loop, deploys once configured, restarts on the new binary when upgraded, and
//! leaves the deployed app alone when removed. Also checks `packaging/config.toml.example` against
//! README's configuration section and drover's own config parser.
//!
//! The package comes from `$DROVER_DEB`, which `make test` and `make test-packages` set after
//! building it; without it the instance test fails, saying to run `make dist`.

use drover::config::Config;
use drover_tests::container::{next_name, Bind, Container, Readiness};
use drover_tests::world::AWS_ENV;
use drover_tests::{http, require_setup, wait_for, workspace_dir, World};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

const DEPLOY: Duration = Duration::from_secs(60);
/// Where the instance sees the directory holding the `.deb` (read-only).
const DEB_DIR_INSIDE: &str = "/mnt/drover-deb";
/// Keys of the example config that are optional and have no default: left commented out when
/// the test spells out every default.
/// Keys without a default, or (`file`) meaningful only beside one of them.
const NO_DEFAULT: [&str; 20] = [
    "trusted_keys",
    "owner",
    "url",
    "region",
    "endpoint_url",
    "metadata_endpoint_url",
    "user",
    "path",
    "file",
    "webhook_url",
    "status_prefix",
    "max_in_flight",
    "target_groups",
    "port",
    "drain_timeout",
    "healthy_timeout",
    "launch_hook",
    "terminate_hook",
    "group",
    "textfile",
];

/// `$DROVER_DEB`, which must name an existing file.
fn deb_path() -> PathBuf {
    let path = std::env::var_os("DROVER_DEB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
                "DROVER_DEB is not set: run `make dist` and set DROVER_DEB to the .deb it writes \
             (target/dist/drover_VERSION_amd64.deb), or run `make test-packages`, which does both"
            )
        });
    assert!(
        path.is_file(),
        "DROVER_DEB={}: no such file; run `make dist`",
        path.display()
    );
    path
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `[package] version` of `agent/Cargo.toml`: what the package and `drover --version` must say.
pub(crate) fn cargo_version() -> String {
    let manifest = workspace_dir().join("agent/Cargo.toml");
    let text = read(&manifest);
    let mut section = "";
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line;
        } else if let Some(value) = line.strip_prefix("version = ") {
            if section == "[package]" {
                return value.trim_matches('"').to_string();
            }
        }
    }
    panic!("no [package] version in {}", manifest.display());
}

/// A booted instance without drover: its user-data installs nothing, and the directory holding
/// the `.deb` is bound read-only at [`DEB_DIR_INSIDE`].
struct Bare {
    // Dropped first: the container halts before its seed goes away.
    container: Container,
    _seed: TempDir,
}

fn boot_without_drover(deb: &Path) -> Bare {
    let rootfs = require_setup();
    let seed = tempfile::Builder::new()
        .prefix("drover-packages-seed-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot make a seed dir: {e}"));
    let name = next_name();
    let write = |file: &str, text: String| {
        let path = seed.path().join(file);
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    };
    write("user-data", "#cloud-config\n{}\n".to_string());
    write(
        "meta-data",
        format!("instance-id: {name}\nlocal-hostname: {name}\n"),
    );
    let deb_dir = deb
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", deb.display()));
    let binds = [
        Bind {
            host: seed.path().to_path_buf(),
            inside: "/var/lib/cloud/seed/nocloud".into(),
            read_only: true,
        },
        Bind {
            host: deb_dir.to_path_buf(),
            inside: DEB_DIR_INSIDE.into(),
            read_only: true,
        },
    ];
    let container = Container::boot(name, &rootfs, &binds, Readiness::Running);
    Bare {
        container,
        _seed: seed,
    }
}

/// Writes a file inside the instance, as root with `mode`.
fn put(c: &Container, inside: &str, text: &str, mode: &str) {
    let path = c.path(inside);
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    c.exec_ok(&["chmod", mode, inside]);
}

/// Runs `dpkg ARGS...` inside and returns its stderr (where the maintainer scripts speak).
fn dpkg(c: &Container, args: &[&str]) -> String {
    let mut argv = vec!["dpkg"];
    argv.extend_from_slice(args);
    let out = c.exec(&argv);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn drover_state(c: &Container, property: &str) -> String {
    c.unit_property("drover.service", property)
}

fn wait_for_events(c: &Container, event: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + DEPLOY;
    loop {
        let events = c.journal_events("drover.service", event);
        if events.len() >= count {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {DEPLOY:?} for {count} EVENT={event} entries, got {}. drover's journal:\n{}",
            events.len(),
            c.journal_text("drover.service")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn served(port: u16) -> String {
    let response = wait_for(Duration::from_secs(10), "the app to answer", || {
        http::get(port, "/version").ok()
    });
    assert_eq!(response.status, 200, "GET /version");
    response.text().trim().to_owned()
}

#[test]
fn the_deb_waits_for_a_config_deploys_upgrades_and_is_removed_without_the_app() {
    let deb = deb_path();
    let deb_name = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let deb_inside = format!("{DEB_DIR_INSIDE}/{deb_name}");
    let version = cargo_version();
    let world = World::new("packages");
    let bare = boot_without_drover(&deb);
    let c = &bare.container;
    assert!(
        !c.path("/usr/local/bin/drover").exists() && !c.path("/usr/bin/drover").exists(),
        "drover is on the instance before the package is installed"
    );
    let credentials: String = AWS_ENV.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    put(c, "/etc/default/drover", &credentials, "0600");
    put(
        c,
        "/etc/systemd/system/app.service",
        &world.app_service(),
        "0644",
    );

    // A fresh install has no config: the unit is enabled, but the agent neither runs nor fails,
    // and the operator is told what to do.
    let said = dpkg(c, &["-i", &deb_inside]);
    assert!(
        said.contains("not started: write /etc/drover/config.toml"),
        "postinst said: {said}"
    );
    assert_eq!(
        c.exec_ok(&["dpkg-query", "-W", "-f", "${Version} ${Status}", "drover"]),
        format!("{} install ok installed", version.replace('-', "~"))
    );
    assert_eq!(
        c.exec_ok(&["sh", "-c", "command -v drover"]).trim(),
        "/usr/bin/drover"
    );
    let said = c.exec_ok(&["drover", "--version"]);
    assert!(
        said.starts_with(&format!("drover {version} (commit ")),
        "{said}"
    );
    assert_eq!(drover_state(c, "UnitFileState"), "enabled");
    let fragment = drover_state(c, "FragmentPath");
    assert!(
        fragment.ends_with("lib/systemd/system/drover.service") && !fragment.starts_with("/etc"),
        "drover.service loaded from {fragment}"
    );
    let exec_start = drover_state(c, "ExecStart");
    assert!(
        exec_start.contains("path=/usr/bin/drover ;"),
        "ExecStart: {exec_start}"
    );
    assert!(c.path("/etc/drover/config.toml.example").is_file());
    assert!(c.path("/usr/share/doc/drover/README.md").is_file());
    // Started anyway (as a reboot would): skipped by its condition, not failed, not restarted.
    c.exec_ok(&["systemctl", "start", "drover.service"]);
    assert_eq!(drover_state(c, "ConditionResult"), "no");
    assert_eq!(drover_state(c, "ActiveState"), "inactive");
    assert_eq!(drover_state(c, "NRestarts"), "0");
    let system = c.exec(&["systemctl", "is-system-running"]);
    assert_eq!(String::from_utf8_lossy(&system.stdout).trim(), "running");

    // The example copied as it is, bucket unset: the agent fails once, naming the key, and stays
    // failed instead of restarting every RestartSec=.
    c.exec_ok(&[
        "install",
        "-m",
        "0600",
        "/etc/drover/config.toml.example",
        "/etc/drover/config.toml",
    ]);
    let start = c.exec(&["systemctl", "start", "drover.service"]);
    assert!(!start.status.success(), "drover started without a bucket");
    assert_eq!(drover_state(c, "ActiveState"), "failed");
    assert_eq!(drover_state(c, "ExecMainStatus"), "2");
    std::thread::sleep(Duration::from_secs(7)); // longer than RestartSec=5s
    assert_eq!(
        drover_state(c, "NRestarts"),
        "0",
        "restarted on a bad config"
    );
    assert_eq!(drover_state(c, "ActiveState"), "failed");
    let journal = c.journal_text("drover.service");
    assert!(journal.contains("artifact.bucket"), "journal:\n{journal}");

    // Configured: the agent deploys.
    put(c, "/etc/drover/config.toml", &world.config_toml(), "0600");
    c.exec_ok(&["systemctl", "reset-failed", "drover.service"]);
    c.exec_ok(&["systemctl", "start", "drover.service"]);
    world.release("1.0.0", true);
    let deployed = wait_for_events(c, "deployed", 1);
    assert_eq!(deployed[0]["VERSION"], "1.0.0");
    assert_eq!(served(world.app_port), "1.0.0");

    // Installed again (an upgrade, as dpkg sees it): the running agent is restarted on the
    // package's binary.
    let before = drover_state(c, "InvocationID");
    dpkg(c, &["-i", &deb_inside]);
    assert_eq!(drover_state(c, "ActiveState"), "active");
    assert_ne!(drover_state(c, "InvocationID"), before, "not restarted");

    // Removed: the agent stops and its files go; the operator's config and the deployed app
    // stay, and the app keeps serving.
    dpkg(c, &["-r", "drover"]);
    assert!(!c.path("/usr/bin/drover").exists());
    assert!(!c.path("/lib/systemd/system/drover.service").exists());
    assert_ne!(drover_state(c, "ActiveState"), "active");
    assert!(c.path("/etc/drover/config.toml").is_file());
    assert_eq!(served(world.app_port), "1.0.0");
    assert_eq!(
        fs::read_link(c.path("/opt/app/current")).ok(),
        Some(PathBuf::from("releases/1.0.0"))
    );

    // Installed over the kept config: running at once, on the state it left.
    dpkg(c, &["-i", &deb_inside]);
    assert_eq!(drover_state(c, "ActiveState"), "active");
    let status = c.exec_ok(&["drover", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status)
        .unwrap_or_else(|e| panic!("drover status --json is not JSON ({e}): {status}"));
    assert_eq!(status["good"], "1.0.0", "{status}");
}

/// `(section, key)` of every `key = value` line, commented out (`#key = ...`) or not.
fn keys(toml: &str) -> BTreeSet<(String, String)> {
    let mut section = String::new();
    let mut keys = BTreeSet::new();
    for line in toml.lines().map(str::trim) {
        // A section may be commented out as a whole (`#[loadbalancer]`), as its keys are.
        let line = line.strip_prefix('#').unwrap_or(line);
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            section = name.to_string();
            continue;
        }
        if let Some((key, _)) = line.split_once(" = ") {
            if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                keys.insert((section.clone(), key.to_string()));
            }
        }
    }
    keys
}

fn example() -> String {
    read(&workspace_dir().join("packaging/config.toml.example"))
}

fn parse(text: &str) -> Result<Config, String> {
    Config::parse(text, Path::new("config.toml.example")).map_err(|e| e.to_string())
}

#[test]
fn example_config_has_every_key_of_the_readme() {
    let readme = read(&workspace_dir().join("README.md"));
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .unwrap_or_else(|| panic!("no ```toml block under README's ## Configuration"));
    let documented = keys(section);
    assert!(documented.len() > 15, "README's keys: {documented:?}");
    let shown = keys(&example());
    let missing: Vec<_> = documented.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "packaging/config.toml.example lacks {missing:?}"
    );
}

#[test]
fn example_config_needs_only_a_bucket_and_shows_the_defaults() {
    let example = example();
    let Err(unset) = parse(&example) else {
        panic!("the example loads without a bucket");
    };
    assert!(unset.contains("artifact.bucket"), "{unset}");

    let with_bucket = example.replace("\nbucket = \"\"\n", "\nbucket = \"my-releases\"\n");
    assert_ne!(
        with_bucket, example,
        "no `bucket = \"\"` line in the example"
    );
    let defaults = parse("[artifact]\nbucket = \"my-releases\"\n").map(|c| format!("{c:?}"));
    assert_eq!(parse(&with_bucket).map(|c| format!("{c:?}")), defaults);

    // Every commented-out key, uncommented, gives the same config: they are the defaults.
    let mut uncommented = 0;
    let spelled_out: String = with_bucket
        .lines()
        .map(|line| {
            let key = line.strip_prefix('#').and_then(|l| l.split_once(" = "));
            match key {
                Some((key, _)) if !key.starts_with(' ') && !NO_DEFAULT.contains(&key) => {
                    uncommented += 1;
                    format!("{}\n", &line[1..])
                }
                _ => format!("{line}\n"),
            }
        })
        .collect();
    assert!(uncommented >= 15, "only {uncommented} defaults uncommented");
    assert_eq!(parse(&spelled_out).map(|c| format!("{c:?}")), defaults);
}

/// The config the example CloudFormation template's user-data writes is one drover loads, with
/// `[fleet]`, `[loadbalancer]` and `[autoscaling]` as docs/AUTOSCALING.md sets them up.
#[test]
fn the_cloudformation_example_writes_a_config_drover_loads() {
    let template = read(&workspace_dir().join("packaging/cloudformation/drover-example.yaml"));
    let start = template
        .find("- path: /etc/drover/config.toml")
        .expect("the template writes /etc/drover/config.toml");
    let body = &template[start..];
    let body = &body[body.find("content: |").expect("its content") + "content: |".len()..];
    let end = body.find("- path:").expect("another file after it");
    let indent = "                  ";
    let config: String = body[..end]
        .lines()
        .map(|line| line.strip_prefix(indent).unwrap_or(line.trim()))
        .collect::<Vec<_>>()
        .join("\n");
    let filled = [
        ("${ParameterName}", "/app/current-version"),
        ("${BucketName}", "my-releases"),
        ("${ReleasePrefix}", "releases/"),
        ("${AppUnit}", "app.service"),
        ("${HealthUrl}", "http://127.0.0.1:8080/health"),
        ("${AWS::Region}", "eu-west-1"),
        ("${StatusPrefix}", "drover/status/"),
        (
            "${TargetGroup}",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/drover-app/0123456789abcdef",
        ),
        ("${AppPort}", "8080"),
        ("${GroupName}", "drover-app"),
    ]
    .iter()
    .fold(config, |text, (name, value)| text.replace(name, value));
    assert!(!filled.contains("${"), "a placeholder left: {filled}");
    let config = parse(&filled).unwrap_or_else(|e| panic!("{e}\n{filled}"));
    assert_eq!(
        config.fleet.max_in_flight,
        Some(drover::lease::MaxInFlight::Count(1))
    );
    assert_eq!(config.loadbalancer.map(|lb| lb.port), Some(Some(8080)));
    let autoscaling = config.autoscaling.expect("[autoscaling]");
    assert_eq!(autoscaling.launch_hook.as_deref(), Some("drover-launch"));
    assert_eq!(autoscaling.group.as_deref(), Some("drover-app"));
}
