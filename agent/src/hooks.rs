//! Lifecycle hooks shipped inside a release, run from the new release only (never the old one's):
//!
//! - `hooks/pre-activate`: after the unpack, before the switch (migrations). A failure aborts the
//!   deploy with nothing switched.
//! - `hooks/validate`: after the health check passed (smoke tests). A failure reverts.
//! - `hooks/post-activate`: after the commit. A failure is reported; the deploy stands.
//!
//! A hook that is not there is skipped; one that is there but not executable fails. Each runs in
//! the release directory as `[hooks] user` (default `[release] owner`, else root), with a clean
//! environment: the app's settings when there are any, then `PATH`, `VERSION`,
//! `PREVIOUS_VERSION`, `RELEASE_DIR`, `DROVER_HOOK`, which win over settings of the same name.
//! Every line it prints goes to the journal as a `hook_output` event with the deploy's fields.
//!
//! Each runs in a transient systemd scope of its own, entered between fork and exec (the child
//! waits at a [`Gate`]), so nothing it starts can leave; at `[hooks] timeout`, or when it exits,
//! systemd kills everything in the scope. Without systemd, a process group stands in, which
//! `setsid` leaves.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::environment;
use crate::owner::Owner;
use crate::service::{Confinement, UnitError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PreActivate,
    Validate,
    PostActivate,
    /// Scale-in (`[autoscaling] terminate_hook`): the running release's, before it drains.
    PreStop,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreActivate => "pre-activate",
            Hook::Validate => "validate",
            Hook::PostActivate => "post-activate",
            Hook::PreStop => "pre-stop",
        }
    }

    /// Where the hook lives, relative to the release directory.
    pub fn relative_path(self) -> PathBuf {
        Path::new("hooks").join(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook {hook}: {path} is not an executable file")]
    NotExecutable { hook: &'static str, path: PathBuf },
    #[error("hook {hook}: cannot start {path}: {source}")]
    Spawn {
        hook: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("hook {hook} failed: {status}")]
    Failed {
        hook: &'static str,
        status: ExitStatus,
    },
    #[error("hook {hook} did not finish within {seconds} s and was killed")]
    Timeout { hook: &'static str, seconds: u64 },
    #[error("hook {hook}: cannot give it a scope of its own: {source}")]
    Confine {
        hook: &'static str,
        source: UnitError,
    },
}

/// What a hook is run with.
pub struct Context<'a> {
    pub release_dir: &'a Path,
    pub version: &'a str,
    pub previous_version: Option<&'a str>,
    pub user: Option<Owner>,
    pub timeout: Duration,
    /// `KEY=value` pairs from the app's environment file.
    pub environment: &'a [(String, String)],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ran {
    /// The release has no such hook.
    Absent,
    Passed(Duration),
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Longest output line passed on; the rest of a longer one is cut.
const MAX_LINE: usize = 4096;
/// Every hook's scope matches this (`drover-hook-{hook}-{pid}.scope`).
pub const SCOPES: &str = "drover-hook-*.scope";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `hook` from `ctx.release_dir` in a scope of its own from `scopes` (or, with no systemd to
/// ask, in a process group only), handing each output line to `on_line`.
pub async fn run(
    hook: Hook,
    ctx: &Context<'_>,
    scopes: &impl Confinement,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<Ran, HookError> {
    use std::os::unix::fs::PermissionsExt;
    let name = hook.as_str();
    let path = ctx.release_dir.join(hook.relative_path());
    let spawn_error = |source| HookError::Spawn {
        hook: name,
        path: path.clone(),
        source,
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ran::Absent),
        Err(source) => return Err(spawn_error(source)),
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(HookError::NotExecutable { hook: name, path });
    }

    let mut command = tokio::process::Command::new(&path);
    command
        .current_dir(ctx.release_dir)
        .env_clear()
        // The settings were filtered when read (crate::environment); filtered again here so that
        // no caller can hand a hook a loader or shell variable. drover's own come last and win.
        .envs(
            (ctx.environment.iter())
                .filter(|(k, _)| environment::loader_or_shell_variable(k).is_none())
                .map(|(k, v)| (k, v)),
        )
        .env("PATH", PATH)
        .env("VERSION", ctx.version)
        .env("PREVIOUS_VERSION", ctx.previous_version.unwrap_or(""))
        .env("RELEASE_DIR", ctx.release_dir)
        .env("DROVER_HOOK", name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Without systemd, the group is all that holds the hook's processes together.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = ctx.user {
        // std drops root's supplementary groups when it changes the uid.
        command.uid(user.uid).gid(user.gid);
    }
    let started = Instant::now();
    let (pid, gate) = Gate::install(&mut command).map_err(spawn_error)?;
    // The child stops at the gate, before exec, until it is in its scope: nothing the hook runs
    // is ever outside it. spawn() returns only once the child has exec'd, so it waits on a
    // thread of its own while this task confines the child.
    let spawning = tokio::task::spawn_blocking(move || command.spawn());
    let Some(pid) = child_pid(pid).await else {
        // The child failed before the gate (the user, the directory): spawn() says why.
        drop(gate);
        return Err(spawn_error(joined(spawning.await).err().unwrap_or_else(
            || std::io::Error::other("the hook's process ended before it ran"),
        )));
    };
    let scope = format!("drover-hook-{name}-{pid}.scope");
    let description = format!("drover: {name} hook of {}", ctx.version);
    let confined = match scopes.confine(&scope, &description, pid).await {
        Ok(()) => Confined::Scope(scopes, scope, pid),
        Err(UnitError::Unreachable(why)) => {
            tracing::warn!(target: "drover", event = crate::events::Event::HookUnscoped.as_str(), hook = name, error = %why,
                "No systemd to put the {name} hook in a scope of its own: only its process group \
                 is killed when it ends, which a process it starts can leave with setsid");
            Confined::Group(pid)
        }
        Err(source) => {
            drop(gate); // the child, still at the gate, exits without running the hook
            let _ = spawning.await;
            return Err(HookError::Confine { hook: name, source });
        }
    };
    gate.open();
    let mut child = match joined(spawning.await) {
        Ok(child) => child,
        Err(source) => {
            confined.kill_all(name).await;
            return Err(spawn_error(source));
        }
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());

    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Stream, String)>(64);
    if let Some(out) = stdout {
        tokio::spawn(forward(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = stderr {
        tokio::spawn(forward(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);

    let deadline = tokio::time::sleep(ctx.timeout);
    tokio::pin!(deadline);
    let mut status = None;
    let mut output_open = true;
    // Until the hook has exited and both pipes are closed (whatever held a pipe open went with
    // the scope; in a process group only, at the deadline).
    while status.is_none() || output_open {
        tokio::select! {
            line = rx.recv(), if output_open => match line {
                Some((stream, line)) => on_line(stream, &line),
                None => output_open = false,
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(spawn_error)?);
                // The hook is done; nothing it started may outlive it.
                confined.kill_all(name).await;
            },
            () = &mut deadline => {
                if status.is_some() {
                    // Exited; something that left its process group (only without a scope)
                    // still holds the output open.
                    break;
                }
                confined.kill_all(name).await;
                let _ = child.wait().await;
                while let Ok((stream, line)) = rx.try_recv() {
                    on_line(stream, &line);
                }
                return Err(HookError::Timeout {
                    hook: name,
                    seconds: ctx.timeout.as_secs(),
                });
            }
        }
    }
    match status {
        Some(status) if status.success() => Ok(Ran::Passed(started.elapsed())),
        Some(status) => Err(HookError::Failed { hook: name, status }),
        None => unreachable!("the loop ends only once the hook has exited"),
    }
}

fn joined<T>(spawned: Result<std::io::Result<T>, tokio::task::JoinError>) -> std::io::Result<T> {
    spawned.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Where a hook's processes are held, and so how all of them are killed.
enum Confined<'a, C> {
    /// A transient scope: systemd kills everything in it, whatever user it runs as. The pid
    /// leads the hook's process group too.
    Scope(&'a C, String, u32),
    /// No systemd: the process group the hook leads, which `setsid` leaves, signalled by drover
    /// itself (which needs CAP_KILL for a hook run as another user).
    Group(u32),
}

impl<C: Confinement> Confined<'_, C> {
    async fn kill_all(&self, hook: &str) {
        match self {
            Confined::Scope(scopes, scope, pgid) => {
                if let Err(e) = scopes.kill_all(scope).await {
                    tracing::error!(target: "drover", event = crate::events::Event::HookFailed.as_str(), hook, error = %e,
                        "Killing what is left of the {hook} hook failed; killing its process group");
                    kill_group(*pgid);
                }
            }
            Confined::Group(pgid) => kill_group(*pgid),
        }
    }
}

/// Holds a spawned child between fork and exec until it is confined: in `pre_exec`, the child
/// writes its pid to one pipe ([`child_pid`]) and reads a byte from another. A closed pipe
/// instead of the byte (drover decided not to run it, or died) makes it exit without running
/// anything.
struct Gate {
    /// The byte that lets the child go on; dropping this without writing stops it.
    go: std::io::PipeWriter,
}

impl Gate {
    /// The gate, and the pipe the child's pid comes from.
    fn install(
        command: &mut tokio::process::Command,
    ) -> std::io::Result<(std::io::PipeReader, Gate)> {
        use std::os::fd::AsRawFd;
        // Both close on exec, so the hook inherits neither.
        let (pid, pid_writer) = std::io::pipe()?;
        let (go_reader, go) = std::io::pipe()?;
        let parents_end = go.as_raw_fd();
        let wait = move || at_gate(pid_writer.as_raw_fd(), go_reader.as_raw_fd(), parents_end);
        #[allow(unsafe_code)]
        // SAFETY: `at_gate` runs in the forked child before exec and makes only async-signal-
        // safe calls (close, getpid, write, read) on descriptors this closure owns or that the
        // parent holds open until the child has passed the gate; it allocates nothing.
        unsafe {
            command.pre_exec(wait);
        }
        Ok((pid, Gate { go }))
    }

    fn open(self) {
        use std::io::Write;
        let mut go = self.go;
        // A child that is gone already fails its spawn, which is reported from there.
        let _ = go.write_all(b"g");
    }
}

/// The child's pid once it waits at the gate; `None` if it ended before (the pipe's other end
/// closes with it, and with the parent's copy once spawn() returns).
async fn child_pid(mut pipe: std::io::PipeReader) -> Option<u32> {
    use std::io::Read;
    let read = tokio::task::spawn_blocking(move || {
        let mut bytes = [0u8; std::mem::size_of::<libc::pid_t>()];
        pipe.read_exact(&mut bytes).map(|()| bytes)
    });
    let bytes = read.await.ok()?.ok()?;
    u32::try_from(libc::pid_t::from_ne_bytes(bytes)).ok()
}

/// The child's side of [`Gate`], between fork and exec.
fn at_gate(
    pid: std::os::fd::RawFd,
    go: std::os::fd::RawFd,
    parents_end: std::os::fd::RawFd,
) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: plain system calls on descriptors open in this process, and a buffer on the stack.
    unsafe {
        // Its copy of the parent's end, or it would never see the parent close it.
        libc::close(parents_end);
        let me = libc::getpid().to_ne_bytes();
        if libc::write(pid, me.as_ptr().cast(), me.len()) != me.len() as isize {
            return Err(std::io::Error::last_os_error());
        }
        let mut byte = 0u8;
        loop {
            match libc::read(go, (&raw mut byte).cast(), 1) {
                1 => return Ok(()),
                -1 if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
                _ => return Err(std::io::Error::from_raw_os_error(libc::ECANCELED)),
            }
        }
    }
}

async fn forward(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: tokio::sync::mpsc::Sender<(Stream, String)>,
) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = line.len().min(MAX_LINE);
        let text = String::from_utf8_lossy(&line[..end]);
        let text = text.trim_end_matches(['\n', '\r']);
        if tx.send((stream, text.to_owned())).await.is_err() {
            return;
        }
    }
}

/// SIGKILL to the hook's process group, which it leads (`process_group(0)`).
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: kill(2) takes no memory; a negative pid names the process group.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn release_with(hook: Hook, script: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(hook.relative_path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn ctx(dir: &Path, timeout: Duration) -> Context<'_> {
        Context {
            release_dir: dir,
            version: "1.2.0",
            previous_version: Some("1.1.0"),
            user: None,
            timeout,
            environment: &[],
        }
    }

    /// A host without systemd: hooks run in a process group only.
    struct NoSystemd;

    impl Confinement for NoSystemd {
        async fn confine(&self, _: &str, _: &str, _: u32) -> Result<(), UnitError> {
            Err(UnitError::Unreachable("no bus in unit tests".into()))
        }
        async fn kill_all(&self, _: &str) -> Result<(), UnitError> {
            unreachable!("nothing was confined")
        }
    }

    /// Stands in for systemd: notes what it is asked, and what the child had done by then.
    #[derive(Default)]
    struct Scopes {
        /// A file the hook writes first thing: it must not exist while the child is confined.
        marker: PathBuf,
        refuse: bool,
        confined: std::cell::RefCell<Vec<(String, String, u32, bool)>>,
        killed: std::cell::RefCell<Vec<String>>,
    }

    impl Confinement for Scopes {
        async fn confine(&self, scope: &str, description: &str, pid: u32) -> Result<(), UnitError> {
            // Give a child that did not wait every chance to run ahead.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let ran = self.marker.exists();
            (self.confined.borrow_mut()).push((scope.into(), description.into(), pid, ran));
            if self.refuse {
                return Err(UnitError::Bus {
                    unit: scope.into(),
                    message: "org.freedesktop.DBus.Error.AccessDenied".into(),
                });
            }
            Ok(())
        }
        async fn kill_all(&self, scope: &str) -> Result<(), UnitError> {
            self.killed.borrow_mut().push(scope.into());
            Ok(())
        }
    }

    async fn run_collect(
        hook: Hook,
        ctx: &Context<'_>,
    ) -> (Result<Ran, HookError>, Vec<(Stream, String)>) {
        run_in(hook, ctx, &NoSystemd).await
    }

    async fn run_in(
        hook: Hook,
        ctx: &Context<'_>,
        scopes: &impl Confinement,
    ) -> (Result<Ran, HookError>, Vec<(Stream, String)>) {
        let mut lines = Vec::new();
        let result = run(hook, ctx, scopes, |s, l| lines.push((s, l.to_owned()))).await;
        (result, lines)
    }

    #[tokio::test]
    async fn a_hook_runs_nothing_until_it_is_in_its_scope_and_the_scope_is_killed_after() {
        let dir = release_with(Hook::Validate, "#!/bin/sh\necho $$ > ran\necho pid $$\n");
        let scopes = Scopes {
            marker: dir.path().join("ran"),
            ..Scopes::default()
        };
        let (result, lines) = run_in(
            Hook::Validate,
            &ctx(dir.path(), Duration::from_secs(5)),
            &scopes,
        )
        .await;
        assert!(matches!(result, Ok(Ran::Passed(_))), "{result:?}");
        let confined = scopes.confined.borrow();
        let (scope, description, pid, ran) = &confined[0];
        assert_eq!(confined.len(), 1);
        assert!(!ran, "the hook ran before it was confined");
        assert_eq!(*scope, format!("drover-hook-validate-{pid}.scope"));
        assert_eq!(description, "drover: validate hook of 1.2.0");
        // The process confined is the one that then became the hook.
        assert_eq!(lines, [(Stream::Stdout, format!("pid {pid}"))]);
        assert_eq!(*scopes.killed.borrow(), std::slice::from_ref(scope));
    }

    #[tokio::test]
    async fn a_hook_that_cannot_be_confined_does_not_run() {
        let dir = release_with(Hook::PreActivate, "#!/bin/sh\ntouch ran\n");
        let scopes = Scopes {
            marker: dir.path().join("ran"),
            refuse: true,
            ..Scopes::default()
        };
        let (result, lines) = run_in(
            Hook::PreActivate,
            &ctx(dir.path(), Duration::from_secs(5)),
            &scopes,
        )
        .await;
        let e = result.unwrap_err();
        assert!(matches!(e, HookError::Confine { .. }), "{e}");
        assert!(e.to_string().contains("AccessDenied"), "{e}");
        assert!(lines.is_empty());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!dir.path().join("ran").exists(), "the hook ran unconfined");
        assert!(scopes.killed.borrow().is_empty());
    }

    #[tokio::test]
    async fn drovers_own_variables_win_and_loader_and_shell_variables_are_left_out() {
        let dir = release_with(
            Hook::PostActivate,
            "#!/bin/sh\necho \"$PATH|$VERSION|$DROVER_HOOK|${LD_PRELOAD-unset}|${BASH_ENV-unset}|$GREETING\"\n",
        );
        let env = [
            ("PATH".to_owned(), "/opt/app/evil".to_owned()),
            ("VERSION".to_owned(), "6.6.6".to_owned()),
            ("DROVER_HOOK".to_owned(), "none".to_owned()),
            ("LD_PRELOAD".to_owned(), "/nonexistent/evil.so".to_owned()),
            ("BASH_ENV".to_owned(), "/nonexistent/rc".to_owned()),
            ("GREETING".to_owned(), "hi".to_owned()),
        ];
        let mut c = ctx(dir.path(), Duration::from_secs(5));
        c.environment = &env;
        let (result, lines) = run_collect(Hook::PostActivate, &c).await;
        assert!(matches!(result, Ok(Ran::Passed(_))), "{result:?}");
        assert_eq!(
            lines,
            [(
                Stream::Stdout,
                format!("{PATH}|1.2.0|post-activate|unset|unset|hi")
            )]
        );
    }

    #[tokio::test]
    async fn a_missing_hook_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (result, _) =
            run_collect(Hook::Validate, &ctx(dir.path(), Duration::from_secs(5))).await;
        assert_eq!(result.unwrap(), Ran::Absent);
    }

    #[tokio::test]
    async fn sees_the_deploy_in_its_environment_and_its_lines_come_back() {
        let dir = release_with(
            Hook::PreActivate,
            "#!/bin/sh\necho \"$DROVER_HOOK $VERSION from $PREVIOUS_VERSION in $(pwd) $RELEASE_DIR\"\n\
             echo \"db=$DATABASE_URL home=${HOME:-unset}\" >&2\n",
        );
        let env = [("DATABASE_URL".to_owned(), "postgres://db".to_owned())];
        let mut c = ctx(dir.path(), Duration::from_secs(5));
        c.environment = &env;
        let (result, lines) = run_collect(Hook::PreActivate, &c).await;
        assert!(matches!(result, Ok(Ran::Passed(_))), "{result:?}");
        let d = dir.path().display();
        assert!(lines.contains(&(
            Stream::Stdout,
            format!("pre-activate 1.2.0 from 1.1.0 in {d} {d}")
        )));
        assert!(lines.contains(&(Stream::Stderr, "db=postgres://db home=unset".to_owned())));
    }

    #[tokio::test]
    async fn a_failing_or_unexecutable_hook_says_so() {
        let dir = release_with(
            Hook::Validate,
            "#!/bin/sh\necho smoke test failed\nexit 3\n",
        );
        let (result, lines) =
            run_collect(Hook::Validate, &ctx(dir.path(), Duration::from_secs(5))).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("hook validate failed") && e.contains("3"), "{e}");
        assert_eq!(lines, [(Stream::Stdout, "smoke test failed".to_owned())]);

        let path = dir.path().join(Hook::Validate.relative_path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (result, _) =
            run_collect(Hook::Validate, &ctx(dir.path(), Duration::from_secs(5))).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("is not an executable file"), "{e}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-pid");
        let release = release_with(
            Hook::PreActivate,
            &format!(
                "#!/bin/sh\nsleep 300 &\necho $! > {}\necho started\nwait\n",
                marker.display()
            ),
        );
        let started = Instant::now();
        let (result, lines) = run_collect(
            Hook::PreActivate,
            &ctx(release.path(), Duration::from_millis(500)),
        )
        .await;
        let e = result.unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(lines, [(Stream::Stdout, "started".to_owned())]);
        // The background sleep went with the group.
        let pid = std::fs::read_to_string(&marker).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()));
        assert!(
            status.map_or(true, |s| s.contains("State:\tZ")),
            "the hook's child {} outlived it",
            pid.trim()
        );
    }
}
