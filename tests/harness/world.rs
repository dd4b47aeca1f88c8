//! One test's world: its own temp dir, S3 bucket, SSM parameter and app port on the shared moto,
//! the operator's side (`drover publish` / `drover promote` run on the host), and instances:
//! containers that install drover from rendered user-data, exactly as an EC2 instance would.

use crate::container::{Bind, Container, Overlay, Readiness};
use crate::http::{self, Response};
use crate::moto::Moto;
use crate::release;
use crate::turns;
use crate::userdata::WriteFile;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;
use tempfile::TempDir;

/// Where the tests' user-data takes the binary from: a read-only bind of a host directory.
pub const DIST_INSIDE: &str = "/mnt/drover-dist";
/// The AWS settings the operator commands and the agent use against moto.
pub const AWS_ENV: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_DEFAULT_REGION", "us-east-1"),
];

/// A test's own corner of moto and the host. Names are unique within the test process.
pub struct World {
    /// The unique label everything here is named after.
    pub name: String,
    pub bucket: String,
    pub parameter: String,
    /// The port the sample app listens on (inside a container, which shares the host's network).
    pub app_port: u16,
    pub moto: &'static Moto,
    config_path: PathBuf,
    dir: TempDir,
    /// Held while the world lives: a test that needs the machine alone waits for it.
    _turn: turns::Shared,
}

/// How to boot one instance. [`World::boot_spec`] gives the normal one; tests change fields.
#[derive(Debug, Clone)]
pub struct Boot {
    /// The file offered to cloud-init as the drover binary.
    pub binary: PathBuf,
    /// The digest the user-data pins.
    pub pinned_sha256: String,
    /// `/etc/drover/config.toml`.
    pub config_toml: String,
    /// Written by cloud-init besides the config: credentials, the app's unit.
    pub extra_files: Vec<WriteFile>,
    /// Enabled once drover is installed: the app's unit, so that it comes back after a reboot.
    pub enable_units: Vec<String>,
    /// What the user-data names as the binary's source; `None`: the file in the read-only dist
    /// directory ([`DIST_INSIDE`]), which always offers `binary`.
    pub source: Option<String>,
    /// The CAs an https source is checked against (`drover::userdata::DOWNLOAD_CA_PATH`).
    pub download_ca: Option<String>,
    /// More host directories to mount.
    pub binds: Vec<Bind>,
    /// Keep what the instance writes in a host directory, so that [`Instance::reboot`] comes back
    /// to it; otherwise every boot is a first boot.
    pub persistent: bool,
    pub readiness: Readiness,
}

/// Where the app's units go on an instance.
const UNIT_DIR: &str = "/etc/systemd/system/";
/// The example units in `systemd/` for a socket-activated app (see [`World::app_socket_units`]).
pub const APP_SOCKET_EXAMPLE: &str = include_str!("../../systemd/app.socket");
pub const APP_SERVICE_EXAMPLE: &str = include_str!("../../systemd/app.service");

impl Boot {
    /// The same boot with `units` (files in `/etc/systemd/system`) as the app's units, all of
    /// them enabled, instead of the plain `app.service`.
    pub fn with_app_units(mut self, units: Vec<WriteFile>) -> Boot {
        self.extra_files.retain(|f| !f.path.starts_with(UNIT_DIR));
        self.enable_units = units
            .iter()
            .map(|u| u.path.trim_start_matches(UNIT_DIR).to_string())
            .collect();
        self.extra_files.extend(units);
        self
    }
}

impl World {
    /// Sets up a world for the test called `label`: requires the machine set-up, waits while a
    /// test has the machine alone (`turns`), starts (or reuses) moto, creates the bucket and
    /// writes the host-side config.
    pub fn new(label: &str) -> World {
        crate::require_setup();
        let turn = turns::Shared::take();
        let name = crate::unique_name(label);
        let dir = tempfile::Builder::new()
            .prefix(&format!("drover-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir for {name}: {e}"));
        let moto = Moto::shared();
        let world = World {
            bucket: format!("drover-{}-{name}", std::process::id()),
            parameter: format!("/drover-test/{name}/version"),
            app_port: crate::free_port(),
            config_path: dir.path().join("drover.toml"),
            name,
            moto,
            dir,
            _turn: turn,
        };
        moto.create_bucket(&world.bucket);
        write(&world.config_path, world.config_toml().as_bytes());
        world
    }

    /// The test's temp dir (removed at the end of the test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file the host-side operator commands use.
    pub fn host_config(&self) -> &Path {
        &self.config_path
    }

    /// The agent config the instances get (SPEC format), pointing at this world's bucket,
    /// parameter, app port and moto.
    pub fn config_toml(&self) -> String {
        format!(
            r#"[source]
parameter = "{parameter}"
poll_interval = "1s"

[artifact]
bucket = "{bucket}"
key = "releases/{{version}}.tar.gz"

[release]
root = "/opt/app"
keep = 3

[service]
units = ["app.service"]

[health]
url = "http://127.0.0.1:{port}/health"
timeout = "10s"
interval = "200ms"
successes = 2

[aws]
region = "us-east-1"
endpoint_url = "{endpoint}"
"#,
            parameter = self.parameter,
            bucket = self.bucket,
            port = self.app_port,
            endpoint = self.moto.endpoint(),
        )
    }

    /// The sample app's unit, written as README's "The app's unit" recommends: enabled, so that
    /// it comes back after a reboot, and skipped (not failed) until drover's first deploy has made
    /// `/opt/app/current`; drover's restart starts it then.
    pub fn app_service(&self) -> String {
        format!(
            "[Unit]\n\
             Description=drover's sample app\n\
             ConditionPathExists=/opt/app/current\n\
             \n\
             [Service]\n\
             ExecStart=/usr/bin/python3 /opt/app/current/app.py\n\
             Environment=APP_PORT={}\n\
             WorkingDirectory=/opt/app/current\n\
             Restart=no\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            self.app_port
        )
    }

    /// The example units `systemd/app.socket` and `systemd/app.service` as an operator copies
    /// them, with the socket on this world's app port: systemd holds the listening socket and
    /// passes it to the sample app (socket activation). For [`Boot::with_app_units`].
    pub fn app_socket_units(&self) -> Vec<WriteFile> {
        let example = "ListenStream=127.0.0.1:8080\n";
        assert!(
            APP_SOCKET_EXAMPLE.contains(example),
            "systemd/app.socket no longer has the line {example:?} that the tests replace"
        );
        let socket = APP_SOCKET_EXAMPLE.replace(
            example,
            &format!("ListenStream=127.0.0.1:{}\n", self.app_port),
        );
        vec![
            unit_file("app.socket", socket),
            unit_file("app.service", APP_SERVICE_EXAMPLE.to_string()),
        ]
    }

    /// Runs `drover --config HOST_CONFIG ARGS...` on the host with the test credentials.
    pub fn drover(&self, args: &[&str]) -> Output {
        let bin = crate::drover_bin();
        Command::new(&bin)
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .envs(AWS_ENV)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
    }

    /// The sample app's release directory for `version` (healthy), with `hooks/NAME` scripts.
    pub fn release_dir_with_hooks(&self, version: &str, hooks: &[(&str, &str)]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::release::app_dir(&self.artifacts_dir(), version, true);
        for (name, script) in hooks {
            let path = dir.join("hooks").join(name);
            let made = fs::create_dir_all(dir.join("hooks"))
                .and_then(|()| fs::write(&path, format!("#!/bin/sh\n{script}\n")))
                .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)));
            made.unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        }
        dir
    }

    /// `drover publish --version VERSION PATH`; panics when it fails.
    pub fn publish(&self, version: &str, path: &Path) {
        let path_text = path.to_string_lossy();
        check(
            &["publish", "--version", version, &path_text],
            &self.drover(&["publish", "--version", version, &path_text]),
        );
    }

    /// The archive at `path` and its true `.sha256`, put straight into the bucket as `version`:
    /// what someone with write access to the bucket can do around `drover publish`, which
    /// would refuse an archive an instance rejects.
    pub fn upload(&self, version: &str, path: &Path) {
        let bytes =
            std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let key = format!("releases/{version}.tar.gz");
        self.moto.put_object(&self.bucket, &key, &bytes);
        let sums = format!("{}  {version}.tar.gz\n", crate::sha256_hex(&bytes));
        (self.moto).put_object(&self.bucket, &format!("{key}.sha256"), sums.as_bytes());
    }

    /// `drover promote VERSION --force`; panics when it fails. Forced: tests put the
    /// parameter before, without or after the artifact on purpose (a missing artifact, an
    /// upload racing a deploy); the guardrail itself is tested in tests/operator.rs.
    pub fn promote(&self, version: &str) {
        let args = ["promote", version, "--force"];
        check(&args, &self.drover(&args));
    }

    /// The sample app's release tarball for `version`, made in this world's temp dir.
    pub fn app_tarball(&self, version: &str, healthy: bool) -> PathBuf {
        release::app_tarball(&self.artifacts_dir(), version, healthy)
    }

    /// Builds the app release for `version`, publishes it and promotes it.
    pub fn release(&self, version: &str, healthy: bool) {
        let tarball = self.app_tarball(version, healthy);
        self.publish(version, &tarball);
        self.promote(version);
    }

    /// A directory for artifacts the test makes itself.
    pub fn artifacts_dir(&self) -> PathBuf {
        let dir = self.dir().join("artifacts");
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        dir
    }

    /// The normal boot: the drover binary under test, its digest pinned, this world's config,
    /// the credentials in `/etc/default/drover` and the app's unit.
    pub fn boot_spec(&self) -> Boot {
        let binary = crate::drover_bin();
        let pinned_sha256 = crate::sha256_file(&binary);
        let credentials: String = AWS_ENV.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        Boot {
            binary,
            pinned_sha256,
            config_toml: self.config_toml(),
            extra_files: vec![
                WriteFile {
                    path: "/etc/default/drover".into(),
                    mode: 0o600,
                    content: credentials,
                },
                unit_file("app.service", self.app_service()),
            ],
            enable_units: vec!["app.service".into()],
            source: None,
            download_ca: None,
            binds: Vec::new(),
            persistent: false,
            readiness: Readiness::Running,
        }
    }

    /// [`World::boot_spec`] for one instance of several: its own app port and instance id
    /// (`imds`, an emulated metadata endpoint), AWS reached at `endpoint` (moto's, or a fault
    /// proxy's in front of it), and `extra` sections after `[aws]`, which comes last.
    pub fn member_spec(&self, app_port: u16, imds: &str, endpoint: &str, extra: &str) -> Boot {
        let mut spec = self.boot_spec();
        let health = format!("127.0.0.1:{}/health", self.app_port);
        let moto = format!("endpoint_url = \"{}\"", self.moto.endpoint());
        assert!(spec.config_toml.contains(&health) && spec.config_toml.trim_end().ends_with(&moto));
        spec.config_toml = spec
            .config_toml
            .replace(&health, &format!("127.0.0.1:{app_port}/health"))
            .replace(&moto, &format!("endpoint_url = \"{endpoint}\""));
        spec.config_toml
            .push_str(&format!("metadata_endpoint_url = \"{imds}\"\n\n{extra}"));
        for file in &mut spec.extra_files {
            file.content = file.content.replace(
                &format!("APP_PORT={}", self.app_port),
                &format!("APP_PORT={app_port}"),
            );
        }
        spec
    }

    /// [`World::boot_spec`] with `[environment] path = env_path` (and `extra` TOML after it),
    /// and an app unit that reads the file drover writes.
    pub fn boot_spec_with_environment(&self, env_path: &str, extra: &str) -> Boot {
        let mut spec = self.boot_spec();
        spec.config_toml
            .push_str(&format!("\n[environment]\npath = \"{env_path}\"\n{extra}"));
        let unit = self.app_service().replace(
            "[Service]\n",
            "[Service]\nEnvironmentFile=-/var/lib/drover/app.env\n",
        );
        for file in &mut spec.extra_files {
            if file.path == "/etc/systemd/system/app.service" {
                file.content = unit.clone();
            }
        }
        spec
    }

    /// A parameter path for this world's `[environment]`.
    pub fn env_path(&self) -> String {
        format!("/drover-test/{}/env", self.name)
    }

    /// Boots an instance the normal way (see [`World::boot_spec`]).
    pub fn boot_instance(&self) -> Instance {
        self.boot(self.boot_spec())
    }

    /// Boots an instance as `spec` says: renders the user-data into a NoCloud seed, offers the
    /// binary in a read-only dist directory, and waits for the boot to finish.
    pub fn boot(&self, spec: Boot) -> Instance {
        let rootfs = crate::require_setup();
        let files = tempfile::Builder::new()
            .prefix(&format!("drover-{}-instance-", self.name))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make an instance temp dir: {e}"));
        let seed = files.path().join("seed");
        let dist = files.path().join("dist");
        let source = (spec.source.clone()).unwrap_or_else(|| format!("{DIST_INSIDE}/drover"));
        let user_data = drover::userdata::UserData {
            // The container's kernel is the host's: `uname -m` says x86_64 inside, whichever
            // build stands behind the pin (an aarch64 one runs through binfmt_misc).
            binaries: vec![drover::userdata::Pin::new(
                drover::userdata::Arch::X86_64,
                &source,
                &spec.pinned_sha256,
            )],
            config_toml: spec.config_toml.clone(),
            extra_files: spec.extra_files.clone(),
            enable_units: spec.enable_units.clone(),
            download_ca: spec.download_ca.clone(),
        };
        write(
            &seed.join("user-data"),
            crate::userdata::render(&user_data).as_bytes(),
        );
        offer_binary(&spec.binary, &dist.join("drover"));
        let mut binds = vec![
            bind_ro(&seed, "/var/lib/cloud/seed/nocloud"),
            bind_ro(&dist, DIST_INSIDE),
        ];
        binds.extend(spec.binds.iter().cloned());
        // Its own parent: overlayfs puts a work directory beside the upper one.
        let overlay = if spec.persistent {
            Overlay::Persistent(files.path().join("root/upper"))
        } else {
            Overlay::Volatile
        };
        let name = crate::container::next_name();
        write(
            &seed.join("meta-data"),
            format!("instance-id: {name}\nlocal-hostname: {name}\n").as_bytes(),
        );
        let started = std::time::Instant::now();
        let container =
            Container::boot_with_overlay(name, &rootfs, overlay, &binds, spec.readiness);
        // Shown with --nocapture or on failure: how long the boot and cloud-init took.
        eprintln!("{}: booted in {:.1?}", container.name(), started.elapsed());
        Instance {
            container,
            app_port: self.app_port,
            spec,
            _files: files,
        }
    }
}

/// A booted instance: the container, plus what drover and the app look like inside it.
pub struct Instance {
    // Dropped first: the container halts before its seed and dist directories go away.
    pub container: Container,
    pub app_port: u16,
    /// How it was booted.
    pub spec: Boot,
    _files: TempDir,
}

impl Instance {
    /// Asserts that cloud-init finished with an error (`cloud-init status --wait`).
    pub fn assert_cloud_init_error(&self) {
        let status = self.exec(&["cloud-init", "status", "--wait"]);
        let status_text = String::from_utf8_lossy(&status.stdout);
        assert!(
            status_text.contains("status: error"),
            "cloud-init: {status_text}"
        );
    }

    /// Asserts that cloud-init refused to install drover: no binary and no temporary file in
    /// `/usr/local/bin`, the unit neither enabled nor ever started.
    pub fn assert_drover_not_installed(&self) {
        assert!(!self.path("/usr/local/bin/drover").exists());
        let leftovers: Vec<_> = fs::read_dir(self.path("/usr/local/bin"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            leftovers.is_empty(),
            "left in /usr/local/bin: {leftovers:?}"
        );
        assert_ne!(
            self.unit_property("drover.service", "UnitFileState"),
            "enabled"
        );
        assert_eq!(
            self.unit_property("drover.service", "InactiveExitTimestampMonotonic"),
            "0",
            "drover.service was started"
        );
    }

    /// Runs a command inside; see [`Container::exec`].
    pub fn exec(&self, args: &[&str]) -> Output {
        self.container.exec(args)
    }

    /// Runs a command inside and returns its stdout, panicking when it fails.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        self.container.exec_ok(args)
    }

    /// drover's journal entries with `EVENT=event`, oldest first.
    pub fn journal_events(&self, event: &str) -> Vec<serde_json::Value> {
        self.container.journal_events("drover.service", event)
    }

    /// drover's journal entries with `EVENT=event` of one boot: `0` this one, `-1` the one before.
    pub fn journal_events_of_boot(&self, event: &str, boot: i32) -> Vec<serde_json::Value> {
        self.container
            .journal_events_of_boot("drover.service", event, boot)
    }

    /// Halts the instance cleanly and boots it again on the same disk (the boot must have been
    /// [`Boot::persistent`]), with the same seed and instance-id: cloud-init does not install
    /// again, and what systemd has enabled starts.
    pub fn reboot(&mut self) {
        let started = std::time::Instant::now();
        self.container.reboot();
        // Shown with --nocapture or on failure, as the first boot's time is.
        eprintln!(
            "{}: rebooted in {:.1?} (halt and boot)",
            self.container.name(),
            started.elapsed()
        );
    }

    /// Waits until drover has logged at least `count` entries with `EVENT=event`, and returns
    /// them all; panics with drover's journal when they do not come.
    pub fn wait_for_events(
        &self,
        event: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let events = self.journal_events(event);
            if events.len() >= count {
                return events;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "{}: waited {timeout:?} for {count} EVENT={event} entries, got {}. drover's journal:\n{}",
                    self.container.name(),
                    events.len(),
                    self.container.journal_text("drover.service")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `drover status --json` inside the instance, parsed.
    /// The names of drover's hook scopes (`drover-hook-*`) systemd knows now, running or not.
    pub fn hook_scopes(&self) -> Vec<String> {
        let listed = self.exec_ok(&[
            "systemctl",
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "drover-hook-*",
        ]);
        let names = listed.lines().filter_map(|l| l.split_whitespace().next());
        names.map(str::to_owned).collect()
    }

    pub fn status_json(&self) -> serde_json::Value {
        let text = self.exec_ok(&["drover", "status", "--json"]);
        let status = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("drover status --json is not JSON ({e}): {text}"));
        self.container.record_status(&status);
        status
    }

    /// `GET http://127.0.0.1:APP_PORT/path` from the host (the container shares its network).
    pub fn http_get(&self, path: &str) -> std::io::Result<Response> {
        http::get(self.app_port, path)
    }

    /// What the app answers on `/version` right now, or `None` when it does not answer 200.
    pub fn version_served(&self) -> Option<String> {
        let response = self.http_get("/version").ok()?;
        (response.status == 200).then(|| response.text().trim().to_owned())
    }

    /// What the app answers on `/version`, once it answers at all (within 10 s); the answer must
    /// be a 200.
    pub fn served(&self) -> String {
        let response = crate::wait_for(Duration::from_secs(10), "the app to answer", || {
            self.http_get("/version").ok()
        });
        assert_eq!(response.status, 200, "GET /version");
        response.text().trim().to_owned()
    }

    /// Nothing of an unfinished download or unpack may be left in the staging area.
    pub fn assert_staging_empty(&self) {
        let listing = self.exec_ok(&["ls", "-A", "/opt/app/.staging"]);
        assert_eq!(listing.trim(), "", "leftovers in /opt/app/.staging");
    }

    /// A path inside the instance, as the host can read it.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.container.path(inside)
    }

    /// Where `/opt/app/current` points (relative, e.g. `releases/1.0.0`), if it exists.
    pub fn current_release(&self) -> Option<PathBuf> {
        fs::read_link(self.path("/opt/app/current")).ok()
    }

    /// `systemctl show -p PROPERTY --value UNIT` inside.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.container.unit_property(unit, property)
    }
}

/// `/etc/systemd/system/NAME`, as `drover user-data --app-unit` writes it.
fn unit_file(name: &str, content: String) -> WriteFile {
    drover::userdata::unit_file(name, content)
        .unwrap_or_else(|e| panic!("not a unit file name: {name}: {e}"))
}

fn check(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "drover {} failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn bind_ro(host: &Path, inside: &str) -> Bind {
    Bind {
        host: host.to_path_buf(),
        inside: inside.to_string(),
        read_only: true,
    }
}

/// Puts the binary in the dist directory: a hard link when it can (a debug build is hundreds of
/// megabytes), else a copy.
fn offer_binary(binary: &Path, dest: &Path) {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    if fs::hard_link(binary, dest).is_err() {
        fs::copy(binary, dest).unwrap_or_else(|e| {
            panic!(
                "cannot copy {} to {}: {e}",
                binary.display(),
                dest.display()
            )
        });
    }
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
