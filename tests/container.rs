//! The instance as cloud-init leaves it, before drover does anything: the user-data is valid,
//! a booted container installs the pinned binary, its config and unit and starts the agent, and
//! a binary that does not match its pinned digest is neither installed nor started.

use drover_tests::userdata::{UserData, WriteFile};
use drover_tests::{sha256_file, sha256_hex, wait_until, Readiness, World};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A config in the SPEC's format, with the files the tests add beside it.
fn sample_user_data() -> UserData {
    UserData {
        drover_source: "/mnt/drover-dist/drover".into(),
        drover_sha256: sha256_hex(b"not really a binary"),
        config_toml: "[source]\nparameter = \"/app/current-version\"\npoll_interval = \"30s\"\n\n\
                      [artifact]\nbucket = \"my-releases\"\nkey = \"releases/{version}.tar.gz\"\n"
            .into(),
        extra_files: vec![
            WriteFile {
                path: "/etc/default/drover".into(),
                mode: 0o600,
                content: "AWS_DEFAULT_REGION=us-east-1\n".into(),
            },
            WriteFile {
                path: "/etc/systemd/system/app.service".into(),
                mode: 0o644,
                content: "[Service]\nExecStart=/usr/bin/python3 /opt/app/current/app.py\n".into(),
            },
        ],
    }
}

fn cloud_init_schema(path: &Path) -> std::process::Output {
    Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `cloud-init schema` (run tests/scripts/setup.sh to install it): {e}")
        })
}

/// The content of `write_files` entry `path` as a YAML parser reads the rendered document.
fn yaml_write_file_content(user_data: &Path, path: &str) -> String {
    let script = "import sys, yaml\n\
                  doc = yaml.safe_load(open(sys.argv[1]))\n\
                  sys.stdout.write(next(f['content'] for f in doc['write_files'] if f['path'] == sys.argv[2]))\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(user_data)
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/python3: {e}"));
    assert!(
        out.status.success(),
        "reading {path} back from {}: {}",
        user_data.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn rendered_user_data_passes_cloud_init_schema() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let rendered = tmp.path().join("user-data");
    let data = sample_user_data();
    fs::write(&rendered, data.render()).unwrap_or_else(|e| panic!("write: {e}"));

    let out = cloud_init_schema(&rendered);
    assert!(
        out.status.success(),
        "cloud-init schema rejects the rendered user-data:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The blocks come back from YAML byte for byte.
    assert_eq!(
        yaml_write_file_content(&rendered, "/etc/drover/config.toml"),
        data.config_toml
    );
    assert_eq!(
        yaml_write_file_content(&rendered, "/etc/systemd/system/drover.service"),
        drover_tests::userdata::DROVER_SERVICE
    );
    assert_eq!(
        yaml_write_file_content(&rendered, "/etc/systemd/system/app.service"),
        data.extra_files[1].content
    );
}

#[test]
fn cloud_init_schema_catches_a_broken_document() {
    // Guards the test above: the validator must be able to say no.
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let broken = tmp.path().join("user-data");
    fs::write(
        &broken,
        "#cloud-config\nwrite_files: not-a-list\nruncmd: 3\n",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    assert!(!cloud_init_schema(&broken).status.success());
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn cloud_init_installs_the_pinned_binary_and_starts_drover() {
    let world = World::new("cloud_init_installs_drover");
    let instance = world.boot_instance();

    let status = instance.exec_ok(&["cloud-init", "status", "--wait"]);
    assert!(status.contains("status: done"), "cloud-init: {status}");

    let binary = instance.path("/usr/local/bin/drover");
    assert_eq!(sha256_file(&binary), instance.spec.pinned_sha256);
    assert_eq!(mode(&binary), 0o755);

    let config = instance.path("/etc/drover/config.toml");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(fs::read_to_string(&config).ok(), Some(world.config_toml()));
    let credentials = instance.path("/etc/default/drover");
    assert_eq!(mode(&credentials), 0o600);
    let credentials = fs::read_to_string(&credentials).unwrap_or_default();
    assert!(
        credentials.contains("AWS_ACCESS_KEY_ID=testing\n"),
        "{credentials}"
    );

    assert_eq!(instance.unit_property("app.service", "LoadState"), "loaded");
    assert_eq!(
        instance.unit_property("drover.service", "LoadState"),
        "loaded"
    );
    assert_eq!(
        instance.unit_property("drover.service", "UnitFileState"),
        "enabled"
    );
    // Whether the agent then stays up is the agent's business; here it only has to be started.
    wait_until(
        Duration::from_secs(30),
        "drover.service to be started",
        || instance.unit_property("drover.service", "InactiveExitTimestampMonotonic") != "0",
    );
}

#[test]
fn a_binary_that_does_not_match_its_pinned_digest_is_not_installed() {
    let world = World::new("tampered_binary");
    let mut spec = world.boot_spec();
    let mut bytes = fs::read(&spec.binary).unwrap_or_else(|e| panic!("read binary: {e}"));
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    let tampered = world.dir().join("drover-tampered");
    fs::write(&tampered, &bytes).unwrap_or_else(|e| panic!("write: {e}"));
    spec.binary = tampered;
    // The failed install fails cloud-init's final stage, so the boot ends degraded.
    spec.readiness = Readiness::Settled;
    let instance = world.boot(spec);

    instance.assert_cloud_init_error();

    instance.assert_drover_not_installed();
    // The operator sees it: the boot is degraded by cloud-final, which says why.
    assert_eq!(
        instance.unit_property("cloud-final.service", "ActiveState"),
        "failed"
    );
    let log = instance.container.journal_text("cloud-final.service");
    assert!(
        log.contains("install-drover: refusing"),
        "cloud-final's journal:\n{log}"
    );
}
