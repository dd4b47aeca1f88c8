//! Lifecycle hooks shipped inside a release, run from the new release only (never the old one's):
//!
//! - `hooks/pre-activate`: after the unpack, before the switch (migrations). A failure aborts the
//!   deploy with nothing switched.
//! - `hooks/validate`: after the health check passed (smoke tests). A failure reverts.
//! - `hooks/post-activate`: after the commit. A failure is reported; the deploy stands.
//!
//! A hook that is not there is skipped; one that is there but not executable fails. Each runs in
//! the release directory as `[hooks] user` (default `[release] owner`, else root), in its own
//! process group, with a clean environment: the app's settings when there are any, then `PATH`,
//! `VERSION`, `PREVIOUS_VERSION`, `RELEASE_DIR`, `DROVER_HOOK`, which win. Every line it prints goes to
//! the journal as a `hook_output` event with the deploy's fields. At `[hooks] timeout`, or when
//! it exits, whatever is left of its process group is killed.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::environment;
use crate::owner::Owner;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    PreActivate,
    Validate,
    PostActivate,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::PreActivate => "pre-activate",
            Hook::Validate => "validate",
            Hook::PostActivate => "post-activate",
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
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `hook` from `ctx.release_dir`, handing each output line to `on_line`.
pub async fn run(
    hook: Hook,
    ctx: &Context<'_>,
    mut on_line: impl FnMut(Stream, &str),
) -> Result<Ran, HookError> {
    use std::os::unix::fs::PermissionsExt;
    let name = hook.as_str();
    let path = ctx.release_dir.join(hook.relative_path());
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ran::Absent),
        Err(source) => {
            return Err(HookError::Spawn {
                hook: name,
                path,
                source,
            })
        }
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
        .process_group(0)
        .kill_on_drop(true);
    if let Some(user) = ctx.user {
        // std drops root's supplementary groups when it changes the uid.
        command.uid(user.uid).gid(user.gid);
    }
    let started = Instant::now();
    let mut child = command.spawn().map_err(|source| HookError::Spawn {
        hook: name,
        path: path.clone(),
        source,
    })?;
    let group = child.id();
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
    // Until the hook has exited and both pipes are closed (a background child holding a pipe
    // open is killed with the group at the deadline).
    while status.is_none() || output_open {
        tokio::select! {
            line = rx.recv(), if output_open => match line {
                Some((stream, line)) => on_line(stream, &line),
                None => output_open = false,
            },
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(|source| HookError::Spawn {
                    hook: name,
                    path: path.clone(),
                    source,
                })?);
                // The hook is done; nothing it started may outlive it.
                kill_group(group);
            },
            () = &mut deadline => {
                if status.is_some() {
                    break; // exited; something that left its group still holds the output open
                }
                kill_group(group);
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
fn kill_group(group: Option<u32>) {
    let Some(pgid) = group.and_then(|g| libc::pid_t::try_from(g).ok()) else {
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

    async fn run_collect(
        hook: Hook,
        ctx: &Context<'_>,
    ) -> (Result<Ran, HookError>, Vec<(Stream, String)>) {
        let mut lines = Vec::new();
        let result = run(hook, ctx, |s, l| lines.push((s, l.to_owned()))).await;
        (result, lines)
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
