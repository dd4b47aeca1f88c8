//! A Debian container booted with systemd-nspawn, standing in for an EC2 instance: systemd as
//! PID 1, real journald and cloud-init, the host's network. Boots from the cached root filesystem
//! under an overlay (the cache is never written): `--volatile=overlay` makes every boot a first
//! boot; a persistent upper directory on the host lets the container [`reboot`](Container::reboot)
//! into what it left, like an instance's disk. Runs commands inside with `nsenter`, and halts on
//! drop. See TESTBED.md for why each flag is there.
//!
//! The host has no systemd, so `machinectl` and `systemd-run -M` are out; each container gets
//! its own host cgroups (`name=systemd` and the v2 `unified` tree), or two containers' services
//! would share one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tempfile::TempDir;

use crate::transcript::Transcript;

const CGROUP_TREES: [&str; 2] = ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"];
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const PATH_INSIDE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A host directory to mount into the container.
#[derive(Debug, Clone)]
pub struct Bind {
    pub host: PathBuf,
    pub inside: String,
    pub read_only: bool,
}

/// When a boot counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// `systemctl is-system-running` must say `running`; `degraded` fails the boot, printing
    /// the failed units.
    Running,
    /// The boot only has to finish: `degraded` is accepted too (for tests of failures at boot).
    Settled,
}

/// Where the container's writes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    /// A tmpfs, gone at halt: every boot is a first boot.
    Volatile,
    /// This host directory (the overlay's upper layer), kept across [`Container::reboot`]; its
    /// owner removes it. overlayfs puts its work directory beside it, so give it a parent of its
    /// own.
    Persistent(PathBuf),
}

/// A booted container. Dropping it halts the container and cleans up after it.
pub struct Container {
    name: String,
    nspawn: Child,
    pid1: u32,
    watchdog: Option<(Child, ChildStdin)>,
    dir: TempDir,
    rootfs: PathBuf,
    binds: Vec<Bind>,
    overlay: Overlay,
    readiness: Readiness,
    /// With `DROVER_TRANSCRIPTS`: what drover said, written when the container goes away.
    transcript: Option<Transcript>,
}

impl Container {
    /// Boots `rootfs` as machine `name` (see [`next_name`]) with `binds`, and waits until it is
    /// ready. Panics with the system state, failed units and the console's last lines when it
    /// does not get there.
    pub fn boot(name: String, rootfs: &Path, binds: &[Bind], readiness: Readiness) -> Container {
        Container::boot_with_overlay(name, rootfs, Overlay::Volatile, binds, readiness)
    }

    /// Boots like [`Container::boot`], with the container's writes going where `overlay` says.
    pub fn boot_with_overlay(
        name: String,
        rootfs: &Path,
        overlay: Overlay,
        binds: &[Bind],
        readiness: Readiness,
    ) -> Container {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(remove_stale_cgroups);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temp dir for container {name}: {e}"));
        let nspawn = spawn_nspawn(&name, rootfs, &overlay, binds, dir.path());
        let watchdog = spawn_watchdog(nspawn.id());
        let mut container = Container {
            name,
            nspawn,
            pid1: 0,
            watchdog: Some(watchdog),
            dir,
            rootfs: rootfs.to_path_buf(),
            binds: binds.to_vec(),
            overlay,
            readiness,
            transcript: Transcript::for_this_test(),
        };
        container.pid1 = container.wait_pid1();
        container.wait_ready(container.readiness);
        container
    }

    /// Halts the container (SIGTERM to nspawn: a clean shutdown) and boots it again with the
    /// same name, binds and upper directory, waiting as the first boot did. Panics on a volatile
    /// container, whose reboot would be a first boot.
    pub fn reboot(&mut self) {
        let Overlay::Persistent(_) = &self.overlay else {
            panic!(
                "{}: reboot needs a persistent overlay (a volatile one would boot afresh)",
                self.name
            );
        };
        let started = std::time::Instant::now();
        self.halt();
        // Shown with --nocapture or on failure, as the boot time is.
        eprintln!("{}: halted in {:.1?}", self.name, started.elapsed());
        self.append_console("\n--- drover test harness: reboot ---\n");
        self.nspawn = spawn_nspawn(
            &self.name,
            &self.rootfs,
            &self.overlay,
            &self.binds,
            self.dir.path(),
        );
        self.watchdog = Some(spawn_watchdog(self.nspawn.id()));
        self.pid1 = self.wait_pid1();
        self.wait_ready(self.readiness);
    }

    /// The machine name (also the container's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's PID 1 (systemd) as the host sees it.
    pub fn pid1(&self) -> u32 {
        self.pid1
    }

    /// A path inside the container, reachable from the host through `/proc/PID1/root`.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid1)).join(inside.trim_start_matches('/'))
    }

    /// Where the container's system bus socket appears on the host (for `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn bus_socket(&self) -> PathBuf {
        self.dir.path().join("dbus/system_bus_socket")
    }

    /// The console output so far (nspawn's and the container's boot messages).
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `args` inside the container (all its namespaces, a clean environment) and returns
    /// what happened; panics only when `nsenter` cannot be started.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "--"])
            .args(args)
            .env_clear()
            .env("PATH", PATH_INSIDE)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{}: cannot run nsenter for {args:?}: {e}", self.name))
    }

    /// Runs `args` inside and returns its stdout; panics with the exit status and stderr when
    /// it does not succeed.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{}: {args:?} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -p PROPERTY --value UNIT`.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        self.exec_ok(&["systemctl", "show", "-p", property, "--value", unit])
            .trim()
            .to_string()
    }

    /// The journal entries of `unit` whose `EVENT` field is `event`, oldest first, as journald's
    /// JSON objects (so `entry["VERSION"]` etc. are strings).
    pub fn journal_events(&self, unit: &str, event: &str) -> Vec<serde_json::Value> {
        self.journal_events_of(unit, event, &[])
    }

    /// Like [`Container::journal_events`], of one boot only: `0` the current one, `-1` the one
    /// before (journalctl's `-b`; the journal is persistent on a persistent overlay).
    pub fn journal_events_of_boot(
        &self,
        unit: &str,
        event: &str,
        boot: i32,
    ) -> Vec<serde_json::Value> {
        self.journal_events_of(unit, event, &[&format!("--boot={boot}")])
    }

    fn journal_events_of(&self, unit: &str, event: &str, more: &[&str]) -> Vec<serde_json::Value> {
        let filter = format!("EVENT={event}");
        let mut args = vec!["journalctl", "--no-pager", "-u", unit, "-o", "json"];
        args.extend_from_slice(more);
        args.push(&filter);
        let text = self.exec_ok(&args);
        text.lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!(
                        "{}: journalctl gave a line that is not JSON ({e}): {line}",
                        self.name
                    )
                })
            })
            .collect()
    }

    /// Keeps a `drover status --json` the test read for the transcript, if there is one.
    pub fn record_status(&self, status: &serde_json::Value) {
        if let Some(transcript) = &self.transcript {
            transcript.status(status);
        }
    }

    /// The journal of `unit` as text, for failure messages.
    pub fn journal_text(&self, unit: &str) -> String {
        let out = self.exec(&[
            "journalctl",
            "--no-pager",
            "-u",
            unit,
            "-o",
            "short-monotonic",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Proportional set size of everything running in the container, in KiB.
    pub fn pss_kib(&self) -> u64 {
        let mut total = 0;
        for pid in cgroup_pids(&Path::new(CGROUP_TREES[1]).join(&self.name)) {
            let rollup =
                fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            total += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        total
    }

    /// Stops the container and removes its host cgroups.
    fn halt(&mut self) {
        // The watchdog goes first, so that it can never signal the nspawn PID after it is reused.
        if let Some((mut child, stdin)) = self.watchdog.take() {
            let _ = child.kill();
            let _ = child.wait();
            drop(stdin);
        }
        // Already halted (a reboot that failed to start again): its PID may belong to another
        // process by now.
        if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            for tree in CGROUP_TREES {
                remove_cgroup(&Path::new(tree).join(&self.name));
            }
            return;
        }
        signal(self.nspawn.id(), "TERM");
        let halted = (0..150).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            matches!(self.nspawn.try_wait(), Ok(Some(_)))
        });
        if !halted {
            eprintln!(
                "{}: did not halt within 15 s of SIGTERM; killing nspawn",
                self.name
            );
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for tree in CGROUP_TREES {
            remove_cgroup(&Path::new(tree).join(&self.name));
        }
    }

    fn append_console(&self, text: &str) {
        use std::io::Write;
        let path = self.dir.path().join("console.log");
        let appended = fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = appended {
            eprintln!("{}: cannot append to {}: {e}", self.name, path.display());
        }
    }

    fn wait_pid1(&mut self) -> u32 {
        let nspawn_pid = self.nspawn.id();
        let what = format!(
            "{}: the container's systemd (child of nspawn {nspawn_pid})",
            self.name
        );
        crate::wait_for(Duration::from_secs(30), &what, || {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "{}: systemd-nspawn exited ({status}) during boot:\n{}",
                    self.name,
                    self.console()
                );
            }
            child_named(nspawn_pid, "systemd")
        })
    }

    fn wait_ready(&self, readiness: Readiness) {
        let what = format!("{} to finish booting", self.name);
        let state = crate::wait_for(BOOT_TIMEOUT, &what, || {
            // Fails until PID 1 takes connections; `--wait` then returns once the boot is over
            // (`timeout` inside, so that a boot stuck on a job still ends in a clear panic).
            let limit = BOOT_TIMEOUT.as_secs().to_string();
            let out = self.exec(&[
                "timeout",
                &limit,
                "systemctl",
                "is-system-running",
                "--wait",
            ]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" | "degraded" | "maintenance" | "stopping" => Some(state),
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    None
                }
            }
        });
        let accepted =
            state == "running" || (readiness == Readiness::Settled && state == "degraded");
        if !accepted {
            let failed = self.exec(&["systemctl", "--failed", "--no-legend", "--no-pager"]);
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "{}: boot ended {state:?}, not running. Failed units:\n{}\nLast console lines:\n{}",
                self.name,
                String::from_utf8_lossy(&failed.stdout),
                tail.join("\n")
            );
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(transcript) = &self.transcript {
            let journal = self.exec(&["journalctl", "--no-pager", "-u", "drover", "-o", "json"]);
            transcript.write(&String::from_utf8_lossy(&journal.stdout));
        }
        self.halt();
    }
}

/// A machine name unique on this host while this process lives: `drover-t-PID-N`.
pub fn next_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("drover-t-{}-{n}", std::process::id())
}

/// Starts nspawn from a shell that first moves itself into the container's own host cgroups.
fn spawn_nspawn(name: &str, rootfs: &Path, overlay: &Overlay, binds: &[Bind], dir: &Path) -> Child {
    let dbus = dir.join("dbus");
    fs::create_dir_all(&dbus).unwrap_or_else(|e| panic!("cannot create {}: {e}", dbus.display()));
    // A stale socket would make readiness checks over the bus lie.
    let _ = fs::remove_file(dbus.join("system_bus_socket"));
    // Appended to: after a reboot it holds both boots.
    let console = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("console.log"))
        .unwrap_or_else(|e| panic!("cannot create {}/console.log: {e}", dir.display()));
    let console_err = console
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot dup the console log handle: {e}"));

    let mut args = vec![
        format!("--directory={}", rootfs.display()),
        "--boot".to_string(),
        "--register=no".to_string(),
        "--keep-unit".to_string(),
        "--console=read-only".to_string(),
        format!("--machine={name}"),
        format!("--bind={}:/run/dbus", dbus.display()),
    ];
    match overlay {
        Overlay::Volatile => args.push("--volatile=overlay".to_string()),
        Overlay::Persistent(upper) => {
            fs::create_dir_all(upper)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", upper.display()));
            // nspawn reads ':' as a separator; the harness's temp paths have none.
            for path in [rootfs, upper.as_path()] {
                assert!(
                    !path.to_string_lossy().contains(':'),
                    "{}: a ':' in an overlay path",
                    path.display()
                );
            }
            args.push(format!(
                "--overlay={}:{}:/",
                rootfs.display(),
                upper.display()
            ));
        }
    }
    for bind in binds {
        let flag = if bind.read_only {
            "--bind-ro"
        } else {
            "--bind"
        };
        args.push(format!("{flag}={}:{}", bind.host.display(), bind.inside));
    }
    let script = r#"name=$1; shift
for tree in /sys/fs/cgroup/systemd /sys/fs/cgroup/unified; do
    mkdir -p "$tree/$name" && echo $$ >"$tree/$name/cgroup.procs" || exit 125
done
exec systemd-nspawn "$@""#;
    Command::new("sh")
        .args(["-c", script, "nspawn-in-cgroup", name])
        .args(&args)
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(console_err)
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start systemd-nspawn: {e}"))
}

/// A shell that sends SIGTERM to nspawn when this process goes away without dropping the
/// container (a crash, a ^C): its stdin is a pipe from us, and end of file is its cue.
fn spawn_watchdog(nspawn_pid: u32) -> (Child, ChildStdin) {
    let mut child = Command::new("sh")
        .args(["-c", "read -r _ || true; kill -TERM \"$1\"", "watchdog"])
        .arg(nspawn_pid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the container watchdog: {e}"));
    let stdin = child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("no stdin pipe to the container watchdog"));
    (child, stdin)
}

/// The PID of a child of `parent` whose command name is `comm`, if there is one yet.
fn child_named(parent: u32, comm: &str) -> Option<u32> {
    let entries = fs::read_dir("/proc").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            parse_stat(&stat) == Some((comm, parent))
        })
}

/// `(comm, ppid)` from the text of `/proc/PID/stat`; comm is in parentheses and may hold spaces.
fn parse_stat(stat: &str) -> Option<(&str, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let ppid = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((comm, ppid))
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for sub in subdirs(dir) {
        pids.extend(cgroup_pids(&sub));
    }
    pids
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes a cgroup and the ones the container's systemd made below it, deepest first; the
/// kernel may take a moment to let go of a cgroup whose last process just exited.
fn remove_cgroup(dir: &Path) {
    for sub in subdirs(dir) {
        remove_cgroup(&sub);
    }
    if !dir.exists() {
        return;
    }
    let removed = (0..50).any(|_| {
        if fs::remove_dir(dir).is_ok() || !dir.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
        false
    });
    if !removed {
        eprintln!(
            "cannot remove cgroup {} (processes left in it?)",
            dir.display()
        );
    }
}

/// Removes the cgroups of containers whose test process died without cleaning up (their
/// watchdog halted them, but the empty cgroups stay behind).
fn remove_stale_cgroups() {
    for tree in CGROUP_TREES {
        for dir in subdirs(Path::new(tree)) {
            let owner = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("drover-t-"))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                remove_cgroup(&dir);
            }
        }
    }
}

/// `kill -SIGNAL PID`, through the shell's builtin (no unsafe `libc::kill` in the harness).
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$1\" \"$2\" 2>/dev/null", "signal", signal])
        .arg(pid.to_string())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parentheses() {
        let stat = "4242 (my (odd) name) S 17 4242 4242 0 -1";
        assert_eq!(parse_stat(stat), Some(("my (odd) name", 17)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
