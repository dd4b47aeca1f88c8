//! `make demo`: drover's main job, shown on this machine in one command. moto stands in for S3
//! and SSM, and a systemd-nspawn container for an EC2 instance that installs drover from its
//! user-data. The operator publishes three releases of the sample app, deploys the first,
//! upgrades to the second, and tries a third that fails its health check, which drover reverts
//! on its own. Exits 0 only when every step had the expected outcome, 1 otherwise.

use drover_tests::world::AWS_ENV;
use drover_tests::{release, Instance, World};
use serde_json::Value;
use std::io::IsTerminal;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long one deploy may take before the demo gives up on it: download, restart, and the
/// health check's 10 s start period for a release that never gets healthy, with room to spare.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);
/// The journal events that end one deploy request.
const VERDICTS: [&str; 4] = ["deployed", "reverted", "revert_failed", "artifact_rejected"];
/// What the demo's last act shows of the `reverted` entry.
const REVERT_FIELDS: &str = "EVENT,VERSION,PREVIOUS_VERSION,PARAMETER_VERSION,ERROR,PRIORITY";

fn main() -> ExitCode {
    if !interrupt::is_worker() {
        return interrupt::supervise();
    }
    interrupt::watch_supervisor();
    std::panic::set_hook(Box::new(report_panic));
    let started = Instant::now();
    let result = std::panic::catch_unwind(run);
    let took = started.elapsed().as_secs_f64();
    // Every container and temp dir has been dropped by now, on success, error and panic alike.
    match result {
        Ok(Ok(())) => {
            println!("\nThe demo passed in {took:.0} s: the app served 1.0.0, then 2.0.0, and still 2.0.0 after drover reverted 3.0.0.");
            ExitCode::SUCCESS
        }
        _ if interrupt::happened() => {
            eprintln!("\nThe demo was interrupted after {took:.0} s; the instance is halted and its files removed.");
            ExitCode::from(130)
        }
        // What went wrong has been said where it happened (`fail`, `report_panic`).
        Ok(Err(_)) | Err(_) => {
            eprintln!("\nThe demo FAILED after {took:.0} s (see ✗ above).");
            ExitCode::FAILURE
        }
    }
}

/// The whole show. The world (moto's bucket and parameter, temp dirs) and the instance are
/// dropped on the way out, whatever happens: the container is halted and its files removed.
fn run() -> Result<(), String> {
    step("1. An emulated AWS, and three releases published from the operator's machine");
    let world = World::new("demo");
    let mut instance = None;
    let outcome = show(&world, &mut instance);
    if let Err(why) = &outcome {
        fail(why);
    }
    step("Cleaning up");
    say("Halting the instance and removing its files; moto stops when the demo exits.");
    drop(instance);
    drop(world);
    outcome
}

/// One function per act; `instance` is left to the caller to drop.
fn show(world: &World, instance: &mut Option<Instance>) -> Result<(), String> {
    publish_releases(world)?;

    step("2. A fresh instance installs drover from its user-data");
    let instance = instance.insert(boot_instance(world)?);
    let mut journal = Journal::default();
    journal.show_new(instance)?;

    step("3. First deploy: promote 1.0.0");
    say("Deploying means putting a version into the SSM parameter. drover on the instance");
    say("notices, downloads the tarball, checks its SHA-256, unpacks it, switches");
    say("/opt/app/current to it, restarts app.service and waits until /health answers 200");
    say("twice in a row.");
    promote_and_watch(
        world,
        instance,
        &mut journal,
        "1.0.0",
        Expect::deployed("1.0.0"),
    )?;

    step("4. Upgrade: promote 2.0.0");
    say("The same again; 1.0.0 stays on disk as the previous good release.");
    promote_and_watch(
        world,
        instance,
        &mut journal,
        "2.0.0",
        Expect::deployed("2.0.0"),
    )?;

    step("5. A bad upgrade: promote 3.0.0, which never gets healthy");
    say("3.0.0 answers 500 on /health. drover gives it the configured start period (10 s here),");
    say("then switches back to 2.0.0, restarts the app and checks it again, with nobody at the");
    say("keyboard.");
    let expect = Expect {
        event: "reverted",
        serving: "2.0.0",
        last_result: "reverted",
    };
    promote_and_watch(world, instance, &mut journal, "3.0.0", expect)?;

    step("6. The revert, as structured journal fields");
    structured_fields(instance)
}

fn publish_releases(world: &World) -> Result<(), String> {
    say(&format!(
        "moto plays S3 and SSM on {}. The releases go to the bucket {};",
        world.moto.endpoint(),
        world.bucket
    ));
    say(&format!(
        "the version to run goes into the SSM parameter {}.",
        world.parameter
    ));
    say(&format!(
        "Here `drover` on the operator's side is short for `drover --config {}`.",
        world.host_config().display()
    ));
    let dir = world.artifacts_dir();
    for (version, healthy) in [("1.0.0", true), ("2.0.0", true), ("3.0.0", false)] {
        release::app_dir(&dir, version, healthy);
    }
    say("Each release of the sample app (a small Python HTTP service) is a directory; 3.0.0 carries");
    say("a file UNHEALTHY, which makes its /health answer 500.");
    transcript_cmd("$", "ls app-3.0.0/");
    let mut files: Vec<String> = std::fs::read_dir(dir.join("app-3.0.0"))
        .map_err(|e| format!("cannot list the 3.0.0 release: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    files.sort();
    transcript_out(&files.join("  "));
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        let path = format!("./app-{version}/");
        operator(world, &dir, &["publish", "--version", version, &path])?;
    }
    Ok(())
}

fn boot_instance(world: &World) -> Result<Instance, String> {
    say("A Debian container booted with systemd-nspawn plays the EC2 instance: systemd is PID 1,");
    say("journald is real, and cloud-init reads the user-data as on EC2. The user-data writes");
    say("/etc/drover/config.toml and drover.service, copies the drover binary, refuses it unless");
    say("its SHA-256 is the pinned one, and starts the service. Booting...");
    let instance = world.boot_instance();
    interrupt::check();
    say(&format!(
        "The instance {} is up. What cloud-init did, and the service it started:",
        instance.container.name()
    ));
    let install = on_instance(
        &instance,
        "grep install-drover: /var/log/cloud-init-output.log",
        &["grep", "install-drover:", "/var/log/cloud-init-output.log"],
    )?;
    if !install.contains("installed /usr/local/bin/drover") {
        return Err("cloud-init did not report installing drover".into());
    }
    let active = on_instance(
        &instance,
        "systemctl is-active drover",
        &["systemctl", "is-active", "drover"],
    )?;
    if active.trim() != "active" {
        return Err(format!("drover.service is {:?}, not active", active.trim()));
    }
    say("Nothing has been promoted yet, so drover finds no parameter and asks again every second:");
    wait_for_first_poll(&instance)?;
    Ok(instance)
}

/// Waits until drover has asked for the parameter once (a fresh agent takes a moment to start).
fn wait_for_first_poll(instance: &Instance) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_json(instance, None)?
        .iter()
        .all(|entry| text(entry, "EVENT") != "poll_failed")
    {
        interrupt::check();
        if Instant::now() >= deadline {
            return Err(format!(
                "drover did not poll the parameter within 30 s. Its journal:\n{}",
                instance.container.journal_text("drover.service")
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

/// What one promote must lead to.
struct Expect {
    /// The journal event that ends the deploy.
    event: &'static str,
    /// What the app must answer on /version afterwards.
    serving: &'static str,
    /// `drover status --json`'s `last.result`.
    last_result: &'static str,
}

impl Expect {
    fn deployed(version: &'static str) -> Expect {
        Expect {
            event: "deployed",
            serving: version,
            last_result: "deployed",
        }
    }
}

/// Promotes `version` from the operator's side, waits for drover's verdict on the instance, and
/// shows the new journal lines, the app's answer and `drover status`.
fn promote_and_watch(
    world: &World,
    instance: &Instance,
    journal: &mut Journal,
    version: &str,
    expect: Expect,
) -> Result<(), String> {
    let since = journal.cursor.clone();
    operator(world, &world.artifacts_dir(), &["promote", version])?;
    say("Waiting for drover's verdict on the instance...");
    let started = Instant::now();
    let verdict = wait_for_verdict(instance, since.as_deref(), version)?;
    let event = text(&verdict, "EVENT");
    say(&format!(
        "drover logged EVENT={event} for {version} {:.1} s after the promote.",
        started.elapsed().as_secs_f64()
    ));
    journal.show_new(instance)?;
    if event != expect.event {
        return Err(format!(
            "expected EVENT={} for {version}, drover logged EVENT={event}: {}",
            expect.event,
            text(&verdict, "MESSAGE")
        ));
    }
    show_app_version(instance, expect.serving)?;
    show_status(instance, &expect)?;
    Ok(())
}

/// The first entry after `since` that ends a deploy of `version`.
fn wait_for_verdict(
    instance: &Instance,
    since: Option<&str>,
    version: &str,
) -> Result<Value, String> {
    let deadline = Instant::now() + VERDICT_TIMEOUT;
    loop {
        interrupt::check();
        let verdict = journal_json(instance, since)?.into_iter().find(|entry| {
            VERDICTS.contains(&text(entry, "EVENT").as_str()) && text(entry, "VERSION") == version
        });
        if let Some(verdict) = verdict {
            return Ok(verdict);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "drover logged no verdict on {version} within {VERDICT_TIMEOUT:?}. Its journal:\n{}",
                instance.container.journal_text("drover.service")
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn show_app_version(instance: &Instance, expected: &str) -> Result<(), String> {
    say("The app, from this host (the instance shares its network):");
    transcript_cmd(
        "$",
        &format!("curl -s http://127.0.0.1:{}/version", instance.app_port),
    );
    let response = instance
        .http_get("/version")
        .map_err(|e| format!("the app does not answer on port {}: {e}", instance.app_port))?;
    let body = response.text();
    transcript_out(body.trim_end());
    if response.status != 200 || body.trim() != expected {
        return Err(format!(
            "the app should serve {expected}, it answered HTTP {}: {:?}",
            response.status,
            body.trim()
        ));
    }
    check_mark(&format!("the app serves {expected}"));
    Ok(())
}

fn show_status(instance: &Instance, expect: &Expect) -> Result<(), String> {
    // With the agent's credentials (an EC2 shell has the instance profile's; this instance has
    // them only in the agent's environment file), so that `desired:` shows the parameter.
    let command = "env $(cat /etc/default/drover) drover status";
    on_instance(instance, command, &["sh", "-c", command])?;
    let status = instance.status_json();
    let current = status["current"].as_str().unwrap_or("-");
    let last = status["last"]["result"].as_str().unwrap_or("-");
    if current != expect.serving || last != expect.last_result {
        return Err(format!(
            "drover status should say current {}, last {}; it says current {current}, last {last}",
            expect.serving, expect.last_result
        ));
    }
    Ok(())
}

/// The `reverted` entry's fields, as a script or a log shipper would read them.
fn structured_fields(instance: &Instance) -> Result<(), String> {
    say("Every step is a journal entry with fields, so a script can ask for exactly the reverts:");
    let fields = format!("--output-fields={REVERT_FIELDS}");
    on_instance(
        instance,
        &format!("journalctl -u drover EVENT=reverted -o verbose {fields}"),
        &[
            "journalctl",
            "--no-pager",
            "-u",
            "drover",
            "EVENT=reverted",
            "-o",
            "verbose",
            &fields,
        ],
    )?;
    let reverts = instance.journal_events("reverted");
    let [entry] = reverts.as_slice() else {
        return Err(format!(
            "expected one EVENT=reverted entry, found {}",
            reverts.len()
        ));
    };
    let got = (
        text(entry, "VERSION"),
        text(entry, "PREVIOUS_VERSION"),
        text(entry, "PRIORITY"),
    );
    if got != ("3.0.0".into(), "2.0.0".into(), "4".into()) || text(entry, "ERROR").is_empty() {
        return Err(format!(
            "the reverted entry should say VERSION=3.0.0 PREVIOUS_VERSION=2.0.0 PRIORITY=4 (warning) \
             and an ERROR; it has {entry}"
        ));
    }
    check_mark(
        "VERSION=3.0.0, PREVIOUS_VERSION=2.0.0, PRIORITY=4 (warning), and the ERROR that caused it",
    );
    Ok(())
}

/// Where the last journal excerpt shown ended, so that each step shows only what is new, as
/// `journalctl --show-cursor` and `--after-cursor` allow.
#[derive(Default)]
struct Journal {
    cursor: Option<String>,
}

impl Journal {
    /// Shows drover's journal lines that are new since the last call, as
    /// `journalctl -u drover -o short` prints them on the instance.
    fn show_new(&mut self, instance: &Instance) -> Result<(), String> {
        let after = self.cursor.as_ref().map(|c| format!("--after-cursor={c}"));
        let mut args = vec![
            "journalctl",
            "--no-pager",
            "--quiet",
            "-u",
            "drover",
            "-o",
            "short",
            "--show-cursor",
        ];
        args.extend(after.as_deref());
        let shown = if self.cursor.is_some() {
            "journalctl -u drover -o short --after-cursor=\"$CURSOR\"   # what is new since the last look"
        } else {
            "journalctl -u drover -o short"
        };
        transcript_cmd(&prompt(instance), shown);
        let out = instance.exec(&args);
        if !out.status.success() {
            return Err(format!(
                "journalctl failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut lines = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            match line.strip_prefix("-- cursor: ") {
                Some(cursor) => self.cursor = Some(cursor.to_string()),
                None => {
                    transcript_out(line);
                    lines += 1;
                }
            }
        }
        if lines == 0 {
            transcript_out("-- No entries --");
        }
        Ok(())
    }
}

/// drover's journal entries after `since` (all of them without), oldest first.
fn journal_json(instance: &Instance, since: Option<&str>) -> Result<Vec<Value>, String> {
    let after = since.map(|c| format!("--after-cursor={c}"));
    let mut args = vec![
        "journalctl",
        "--no-pager",
        "--quiet",
        "-u",
        "drover",
        "-o",
        "json",
    ];
    args.extend(after.as_deref());
    let out = instance.exec(&args);
    if !out.status.success() {
        return Err(format!(
            "journalctl failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .map_err(|e| format!("journalctl gave bad JSON ({e}): {line}"))
        })
        .collect()
}

/// Runs `drover ARGS...` on the operator's side (this host) in `dir`, showing it as typed.
fn operator(world: &World, dir: &Path, args: &[&str]) -> Result<String, String> {
    transcript_cmd("$", &format!("drover {}", args.join(" ")));
    let out = Command::new(drover_tests::drover_bin())
        .arg("--config")
        .arg(world.host_config())
        .args(args)
        .envs(AWS_ENV)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run drover: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    transcript_out(stdout.trim_end());
    transcript_out(String::from_utf8_lossy(&out.stderr).trim_end());
    if !out.status.success() {
        return Err(format!("drover {} failed ({})", args.join(" "), out.status));
    }
    Ok(stdout.into_owned())
}

/// Runs `args` inside the instance as root, showing it as `shown`; fails when it fails.
fn on_instance(instance: &Instance, shown: &str, args: &[&str]) -> Result<String, String> {
    transcript_cmd(&prompt(instance), shown);
    let out = instance.exec(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    transcript_out(stdout.trim_end());
    transcript_out(String::from_utf8_lossy(&out.stderr).trim_end());
    if !out.status.success() {
        return Err(format!("`{shown}` failed on the instance ({})", out.status));
    }
    Ok(stdout.into_owned())
}

fn prompt(instance: &Instance) -> String {
    format!("root@{}:~#", instance.container.name())
}

/// A journal field as text ("" when absent).
fn text(entry: &Value, field: &str) -> String {
    entry[field].as_str().unwrap_or_default().to_string()
}

// The printer: section headers, narration, and a transcript of commands with their output.

fn step(title: &str) {
    interrupt::check();
    IN_TRANSCRIPT.store(false, Ordering::Relaxed);
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m==> {title}\x1b[0m\n");
    } else {
        println!("\n==> {title}\n");
    }
}

/// Whether the last thing printed was part of a transcript, which narration keeps apart from.
static IN_TRANSCRIPT: AtomicBool = AtomicBool::new(false);

fn say(text: &str) {
    if IN_TRANSCRIPT.swap(false, Ordering::Relaxed) {
        println!();
    }
    println!("{text}");
}

fn transcript_cmd(prompt: &str, command: &str) {
    IN_TRANSCRIPT.store(true, Ordering::Relaxed);
    println!("\n    {prompt} {command}");
}

fn transcript_out(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn check_mark(what: &str) {
    say(&format!("  ✓ {what}"));
}

fn fail(why: &str) {
    say(&format!("  ✗ {why}"));
}

/// Says what went wrong when the harness (or the demo) panics; the unwinding that follows halts
/// the instance and removes the temp dirs.
fn report_panic(info: &std::panic::PanicHookInfo<'_>) {
    if interrupt::happened() {
        return;
    }
    let message = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    let place = info
        .location()
        .map(|l| format!(" (at {}:{})", l.file(), l.line()))
        .unwrap_or_default();
    eprintln!("\n  ✗ {message}{place}");
    eprintln!("\nCleaning up: halting the instance and removing its files...");
}

/// Ctrl-C at a terminal signals the whole foreground process group, and moto's wrapper and the
/// containers' watchdogs would die with the demo, leaving moto running and the temp dirs behind.
/// So the demo runs as a worker in a process group of its own, under a small supervisor (this
/// same binary) that takes the signal. However the supervisor goes (Ctrl-C, SIGTERM, killed),
/// the worker's stdin, a pipe from it, reaches end of file; the worker then unwinds, dropping
/// the instance (halted) and the temp dirs, and moto stops when the worker exits. A worker
/// killed outright still has the harness's watchdogs.
mod interrupt {
    use std::io::Read;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Command, ExitCode, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};

    const WORKER: &str = "--worker";
    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    /// Marks a panic that stops the demo because it was asked to.
    struct Interrupted;

    /// Whether this process is the worker (else it is the supervisor).
    pub fn is_worker() -> bool {
        std::env::args().nth(1).as_deref() == Some(WORKER)
    }

    /// The supervisor: runs the worker in its own process group and exits as it does.
    pub fn supervise() -> ExitCode {
        let worker = std::env::current_exe().and_then(|exe| {
            Command::new(exe)
                .arg(WORKER)
                .process_group(0)
                .stdin(Stdio::piped())
                .spawn()
        });
        let status = worker.and_then(|mut worker| {
            // Kept open as long as this process lives (`wait` would close it).
            let _stdin = worker.stdin.take();
            worker.wait()
        });
        match status {
            Ok(status) => match (status.code(), status.signal()) {
                (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                (None, signal) => {
                    eprintln!("The demo was killed (signal {signal:?}).");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("Cannot run the demo: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// In the worker: notices when the supervisor goes away.
    pub fn watch_supervisor() {
        std::thread::spawn(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\nInterrupted: halting the instance and removing its files...");
        });
    }

    pub fn happened() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    /// Unwinds out of the demo when it has been interrupted.
    pub fn check() {
        if happened() {
            std::panic::panic_any(Interrupted);
        }
    }
}
