//! Installing drover with cloud-init, as on a new EC2 instance: `drover user-data` renders valid
//! cloud-config, the install script downloads the pinned binary over https with whichever of
//! curl, wget and python3 the image has (and refuses a wrong digest and plain http), and after a
//! reboot the agent and the app come back at the version they ran, with no new deploy.

use drover_tests::https::{HostTool, HttpsServer};
use drover_tests::{sha256_file, sha256_hex, wait_for, wait_until, Instance, Readiness, World};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn drover(args: &[&str]) -> Output {
    let bin = drover_tests::drover_bin();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

fn cloud_init_schema(path: &Path) -> Output {
    Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `cloud-init schema` (run tests/scripts/setup.sh to install it): {e}")
        })
}

/// `drover user-data ARGS`, which must succeed and pass `cloud-init schema`; returns the
/// document's path (in `dir`) and text.
fn render_valid(dir: &Path, args: &[&str]) -> (PathBuf, String) {
    let mut all = vec!["user-data"];
    all.extend_from_slice(args);
    // Proves that the command reads no config of its own.
    all.extend_from_slice(&["--config", "/nonexistent/drover.toml"]);
    let out = drover(&all);
    assert!(
        out.status.success(),
        "drover {} failed ({}): {}",
        all.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("user-data");
    fs::write(&path, &out.stdout).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    let schema = cloud_init_schema(&path);
    assert!(
        schema.status.success(),
        "cloud-init schema rejects `drover {}`:\n{}{}",
        all.join(" "),
        String::from_utf8_lossy(&schema.stdout),
        String::from_utf8_lossy(&schema.stderr)
    );
    (path, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A part of the rendered document as a YAML parser reads it, as JSON: `write_files` entry
/// `path`'s content, or `runcmd`.
fn yaml_query(user_data: &Path, query: &str, arg: &str) -> serde_json::Value {
    let script = "import json, sys, yaml\n\
                  doc = yaml.safe_load(open(sys.argv[1]))\n\
                  files = {f['path']: f for f in doc['write_files']}\n\
                  q, arg = sys.argv[2], sys.argv[3]\n\
                  out = files[arg]['content'] if q == 'file' else \
                        files[arg]['permissions'] if q == 'mode' else doc['runcmd']\n\
                  print(json.dumps(out))\n";
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(user_data)
        .args([query, arg])
        .output()
        .unwrap_or_else(|e| panic!("cannot run /usr/bin/python3: {e}"));
    assert!(
        out.status.success(),
        "reading {query} {arg} back from {}: {}",
        user_data.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON: {e}"))
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"))
}

#[test]
fn drover_user_data_from_flags_passes_cloud_init_schema() {
    let tmp = temp_dir();
    let digest = sha256_hex(b"a drover binary");
    let arm_digest = sha256_hex(b"an aarch64 drover binary");
    let (path, _) = render_valid(
        tmp.path(),
        &[
            "--source",
            "https://downloads.example.com/drover/0.1.0/drover",
            "--sha256",
            &digest,
            "--source",
            "aarch64=https://downloads.example.com/drover/0.1.0/drover-aarch64",
            "--sha256",
            &format!("aarch64={arm_digest}"),
            "--bucket",
            "my-releases",
            "--units",
            "app.service,worker.service",
            "--health-url",
            "http://127.0.0.1:8080/health",
        ],
    );
    let config = yaml_query(&path, "file", "/etc/drover/config.toml");
    let config = config.as_str().unwrap_or_default();
    let parsed = drover::config::Config::parse(config, Path::new("rendered"))
        .unwrap_or_else(|e| panic!("{e}\n{config}"));
    assert_eq!(parsed.artifact.bucket, "my-releases");
    assert_eq!(parsed.artifact.key, "releases/{version}.tar.gz");
    assert_eq!(parsed.source.parameter, "/app/current-version");
    assert_eq!(parsed.service.units, ["app.service", "worker.service"]);
    assert_eq!(
        parsed.health.url.as_deref(),
        Some("http://127.0.0.1:8080/health")
    );
    assert_eq!(yaml_query(&path, "mode", "/etc/drover/config.toml"), "0600");
    // The flags set no path: the drop-in names the defaults, as the unit does.
    let drop_in = yaml_query(&path, "file", drover::sandbox::DROP_IN_PATH);
    assert!(
        drop_in.as_str().unwrap_or_default().ends_with(
            "\nReadWritePaths=\nReadWritePaths=-/opt/app\nReadWritePaths=\
                 -/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter\n"
        ),
        "{drop_in}"
    );
    assert_eq!(
        yaml_query(&path, "runcmd", ""),
        serde_json::json!([[
            "/usr/local/lib/drover/install-drover",
            "x86_64",
            "https://downloads.example.com/drover/0.1.0/drover",
            digest,
            "aarch64",
            "https://downloads.example.com/drover/0.1.0/drover-aarch64",
            arm_digest,
            "--"
        ]])
    );
}

#[test]
fn drover_user_data_embeds_a_config_file_an_app_unit_and_a_ca() {
    let tmp = temp_dir();
    let config = "# ours\n[artifact]\nbucket = \"b\"\n\n[release]\nroot = \"/srv/web\"\n\n[service]\nunits = [\"web.service\"]\n";
    let unit = "[Unit]\nConditionPathExists=/srv/web/current\n\n[Service]\nExecStart=/srv/web/current/web\n\n[Install]\nWantedBy=multi-user.target\n";
    let ca = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
    let files = [
        ("config.toml", config),
        ("web.service", unit),
        ("ca.pem", ca),
    ];
    for (name, text) in files {
        fs::write(tmp.path().join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
    let digest = sha256_hex(b"a drover binary");
    let arg = |name: &str| tmp.path().join(name).to_string_lossy().into_owned();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let (path, _) = render_valid(
        &out_dir,
        &[
            "--source",
            "/usr/lib/drover/drover",
            "--sha256",
            &digest,
            "--config-file",
            &arg("config.toml"),
            "--app-unit",
            &arg("web.service"),
            "--download-ca",
            &arg("ca.pem"),
        ],
    );
    assert_eq!(yaml_query(&path, "file", "/etc/drover/config.toml"), config);
    assert_eq!(
        yaml_query(&path, "file", "/etc/systemd/system/web.service"),
        unit
    );
    assert_eq!(
        yaml_query(&path, "file", "/etc/systemd/system/drover.service"),
        drover::userdata::DROVER_SERVICE
    );
    assert_eq!(
        yaml_query(&path, "file", drover::userdata::DOWNLOAD_CA_PATH),
        ca
    );
    // The sandbox's drop-in follows the config's [release] root.
    let parsed = drover::config::Config::parse(config, Path::new("/etc/drover/config.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let drop_in = drover::sandbox::drop_in(&parsed, Path::new("/etc/drover/config.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        drop_in.contains("\nReadWritePaths=-/srv/web\n"),
        "{drop_in}"
    );
    assert_eq!(
        yaml_query(&path, "file", drover::sandbox::DROP_IN_PATH),
        drop_in
    );
    assert_eq!(
        yaml_query(&path, "runcmd", ""),
        serde_json::json!([[
            "/usr/local/lib/drover/install-drover",
            "x86_64",
            "/usr/lib/drover/drover",
            digest,
            "--",
            "web.service"
        ]])
    );
}

#[test]
fn drover_user_data_refuses_bad_input_with_status_2() {
    let tmp = temp_dir();
    let bad_config = tmp.path().join("bad.toml");
    fs::write(
        &bad_config,
        "[artifact]\nbucket = \"b\"\nkey = \"latest.tar.gz\"\n",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let bad_config = bad_config.to_string_lossy().into_owned();
    let spaced = tmp.path().join("spaced.toml");
    fs::write(
        &spaced,
        "[artifact]\nbucket = \"b\"\n[release]\nroot = \"/srv/my app\"\n",
    )
    .unwrap_or_else(|e| panic!("write: {e}"));
    let spaced = spaced.to_string_lossy().into_owned();
    let digest = sha256_hex(b"x");
    let https = "https://example.com/drover";
    let cases: [(&[&str], &str); 9] = [
        (
            &[
                "--source", "arm64=/x", "--sha256", "arm64=ab", "--bucket", "b",
            ],
            "\"arm64\" is not an architecture drover is built for (x86_64, aarch64)",
        ),
        (
            &[
                "--source",
                https,
                "--sha256",
                &digest,
                "--source",
                "aarch64=/x",
                "--bucket",
                "b",
            ],
            "--source for aarch64 without its --sha256",
        ),
        (
            &[
                "--source",
                "http://example.com/drover",
                "--sha256",
                &digest,
                "--bucket",
                "b",
            ],
            "plain http is refused",
        ),
        (
            &["--source", https, "--sha256", "ABC", "--bucket", "b"],
            "sha256",
        ),
        (
            &[
                "--source",
                https,
                "--sha256",
                &digest,
                "--config-file",
                &bad_config,
            ],
            "artifact.key",
        ),
        (
            &[
                "--source", https, "--sha256", &digest, "--bucket", "b", "--key", "x.tgz",
            ],
            "artifact.key",
        ),
        (
            &[
                "--source",
                https,
                "--sha256",
                &digest,
                "--config-file",
                &bad_config,
                "--bucket",
                "b",
            ],
            "cannot be used with",
        ),
        (&["--source", https, "--sha256", &digest], "--bucket"),
        (
            &[
                "--source",
                https,
                "--sha256",
                &digest,
                "--config-file",
                &spaced,
            ],
            "release.root \"/srv/my app\": ' ' cannot go into drover.service's drop-in",
        ),
    ];
    for (args, says) in cases {
        let mut all = vec!["user-data"];
        all.extend_from_slice(args);
        let out = drover(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed something");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// An https server for `world` that offers the drover binary under test as `/drover`.
fn serve_binary(world: &World) -> HttpsServer {
    let root = world.dir().join("www");
    fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
    let binary = drover_tests::drover_bin();
    if fs::hard_link(&binary, root.join("drover")).is_err() {
        fs::copy(&binary, root.join("drover")).unwrap_or_else(|e| panic!("copy: {e}"));
    }
    HttpsServer::serve(&root)
}

/// What cloud-init's final stage (where install-drover runs) said in boot `boot`.
fn cloud_final_log(instance: &Instance, boot: i32) -> String {
    instance.exec_ok(&[
        "journalctl",
        "--no-pager",
        &format!("--boot={boot}"),
        "-u",
        "cloud-final.service",
    ])
}

/// Boots with an https source and the server's CA, lending the container `tool` from the host
/// (`None`: the image's own python3), and checks that drover got installed with that tool and runs.
fn installs_over_https(label: &str, tool: Option<&str>, expect: &str) {
    let world = World::new(label);
    let server = serve_binary(&world);
    let mut spec = world.boot_spec();
    spec.source = Some(server.url("/drover"));
    spec.download_ca = Some(server.ca_pem().to_string());
    if let Some(tool) = tool {
        let lent = HostTool::lend(tool, &world.dir().join("tools"));
        spec.binds.push(lent.bind);
        spec.extra_files.push(lent.wrapper);
    }
    let instance = world.boot(spec);

    let status = instance.exec_ok(&["cloud-init", "status", "--wait"]);
    assert!(status.contains("status: done"), "cloud-init: {status}");
    let log = cloud_final_log(&instance, 0);
    assert!(
        log.contains(&format!(
            "downloading {} with {expect}",
            server.url("/drover")
        )),
        "cloud-final's journal:\n{log}"
    );
    assert_eq!(
        server.requests(),
        ["GET /drover HTTP/1.1\" 200 -"],
        "requests served"
    );
    let binary = instance.path("/usr/local/bin/drover");
    assert_eq!(sha256_file(&binary), instance.spec.pinned_sha256);
    wait_until(
        Duration::from_secs(30),
        "drover.service to be active",
        || instance.unit_property("drover.service", "ActiveState") == "active",
    );
    assert_eq!(
        instance.unit_property("drover.service", "UnitFileState"),
        "enabled"
    );
}

#[test]
fn installs_drover_over_https_with_curl() {
    installs_over_https("https_curl", Some("curl"), "curl");
}

#[test]
fn installs_drover_over_https_with_wget_when_there_is_no_curl() {
    installs_over_https("https_wget", Some("wget"), "wget");
}

#[test]
fn installs_drover_over_https_with_python3_when_there_is_no_curl_or_wget() {
    // The test image is Debian's minimal one: neither curl nor wget.
    installs_over_https("https_python3", None, "python3");
}

#[test]
fn a_download_that_does_not_match_its_digest_or_is_plain_http_is_not_installed() {
    let world = World::new("https_wrong_digest");
    let server = serve_binary(&world);
    let mut spec = world.boot_spec();
    spec.source = Some(server.url("/drover"));
    spec.download_ca = Some(server.ca_pem().to_string());
    spec.pinned_sha256 = sha256_hex(b"some other binary");
    // The failed install fails cloud-init's final stage, so the boot ends degraded.
    spec.readiness = Readiness::Settled;
    let instance = world.boot(spec);

    instance.assert_cloud_init_error();
    // It was downloaded, then refused.
    assert_eq!(server.requests(), ["GET /drover HTTP/1.1\" 200 -"]);
    let log = cloud_final_log(&instance, 0);
    assert!(
        log.contains("install-drover: refusing https://"),
        "cloud-final's journal:\n{log}"
    );
    assert_nothing_installed(&instance);

    // The same binary, with its real digest, over plain http: refused before any request.
    let http = server.url("/drover").replacen("https://", "http://", 1);
    let real = sha256_file(&drover_tests::drover_bin());
    let install = "/usr/local/lib/drover/install-drover";
    let out = instance.exec(&[install, "x86_64", &http, &real, "--"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plain http"), "{stderr}");
    assert_eq!(server.requests().len(), 1, "plain http was requested");
    assert_nothing_installed(&instance);

    // A binary pinned for aarch64 only, on this x86_64 instance: nothing is fetched.
    let out = instance.exec(&[install, "aarch64", &server.url("/drover"), &real, "--"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "no drover binary is pinned for this machine's architecture (x86_64); pinned: aarch64"
        ),
        "{stderr}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "the aarch64 binary was requested"
    );
    assert_nothing_installed(&instance);
}

fn assert_nothing_installed(instance: &Instance) {
    instance.assert_drover_not_installed();
    // Nor is the app's unit enabled: that happens only after drover is installed.
    assert_eq!(
        instance.unit_property("app.service", "UnitFileState"),
        "disabled"
    );
}

fn app_version(instance: &Instance) -> String {
    wait_for(
        Duration::from_secs(30),
        "the app to answer /version",
        || {
            instance
                .http_get("/version")
                .ok()
                .filter(|r| r.status == 200)
        },
    )
    .text()
}

#[test]
fn after_a_reboot_the_agent_and_the_app_come_back_at_the_same_version() {
    let world = World::new("reboot");
    world.release("1.0.0", true);
    let mut spec = world.boot_spec();
    spec.persistent = true;
    let mut instance = world.boot(spec);
    // Before the first deploy the app's unit is enabled but skipped, which is not a failure.
    assert_eq!(
        instance.unit_property("app.service", "UnitFileState"),
        "enabled"
    );
    instance.wait_for_events("deployed", 1, Duration::from_secs(60));
    world.release("2.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, Duration::from_secs(60));
    assert_eq!(deployed[1]["VERSION"], "2.0.0");
    assert_eq!(app_version(&instance), "2.0.0\n");
    let binary_before = sha256_file(&instance.path("/usr/local/bin/drover"));

    instance.reboot();

    // The agent is back, and has made a whole pass that found nothing to do.
    wait_until(
        Duration::from_secs(30),
        "drover.service to be active",
        || instance.unit_property("drover.service", "ActiveState") == "active",
    );
    wait_until(
        Duration::from_secs(30),
        "drover to report a pass in sync",
        || {
            instance.unit_property("drover.service", "StatusText")
                == "running 2.0.0; last pass: in sync"
        },
    );
    // The app was started by the boot (its unit is enabled), not by a deploy.
    assert_eq!(
        instance.unit_property("app.service", "ActiveState"),
        "active"
    );
    assert_eq!(app_version(&instance), "2.0.0\n");
    let status = instance.status_json();
    assert_eq!(
        (&status["current"], &status["good"], &status["previous"]),
        (
            &serde_json::json!("2.0.0"),
            &serde_json::json!("2.0.0"),
            &serde_json::json!("1.0.0")
        ),
        "{status:#}"
    );
    // The journal is persistent: the first boot's deploys are there, the new boot has none.
    assert_eq!(
        instance.journal_events_of_boot("deploy_started", -1).len(),
        2
    );
    for event in ["deploy_started", "switched", "unit_restarted", "deployed"] {
        let events = instance.journal_events_of_boot(event, 0);
        assert!(events.is_empty(), "{event} after the reboot: {events:?}");
    }
    // cloud-init did not install again (same instance-id): same binary, no install-drover run.
    assert_eq!(
        sha256_file(&instance.path("/usr/local/bin/drover")),
        binary_before
    );
    let log = cloud_final_log(&instance, 0);
    assert!(
        !log.contains("install-drover"),
        "cloud-final ran the install again:\n{log}"
    );
    assert!(
        cloud_final_log(&instance, -1).contains("install-drover: installed"),
        "the first boot's install is not in the journal"
    );
}
