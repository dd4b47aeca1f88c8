//! Reading a file that root acts on (the config): only if nobody but root, or the user running
//! drover, could have written it. Whoever can change the config can deploy anything as root.
//!
//! The rule is OpenSSH's for its key files, applied from `/` down: the file and every directory
//! on the way belong to root (or to the running user: an operator's own config for `drover
//! publish`), and none is writable by group or others, except a root-owned sticky directory such
//! as `/tmp`, where nobody can rename or remove another's entry. The file itself must not be a
//! symlink. A symlinked directory on the way is followed only when it is owned the same way and
//! sits in a directory that passed, so only root (or the user) could have placed it; its target
//! is then walked with the same checks. The walk holds each directory open and goes on from it
//! (`openat` with `O_NOFOLLOW`, `fstat` on what it opened), so no path is resolved twice, and the
//! file is read from the descriptor it was judged by.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// What one step of the way is, as `fstat` saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: Kind,
    /// `st_mode`'s permission bits (with the sticky bit).
    pub mode: u32,
    pub uid: u32,
}

/// Why a step cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The file itself is a symbolic link.
    Symlink,
    /// The file is not a regular file.
    NotAFile,
    /// A step on the way is neither a directory nor a symbolic link.
    NotADirectory,
    /// Owned by `uid`, which is neither root nor the running user.
    Owner { uid: u32 },
    /// Writable by group or others (`mode`).
    Writable { mode: u32 },
}

/// Whether `seen` can be trusted as the file (`last`) or as a step on the way to it, by a process
/// whose effective uid is `euid`.
pub fn judge(seen: Seen, last: bool, euid: u32) -> Result<(), Problem> {
    match (seen.kind, last) {
        (Kind::File, true) | (Kind::Dir | Kind::Symlink, false) => {}
        (Kind::Symlink, true) => return Err(Problem::Symlink),
        (_, true) => return Err(Problem::NotAFile),
        (_, false) => return Err(Problem::NotADirectory),
    }
    if seen.uid != 0 && seen.uid != euid {
        return Err(Problem::Owner { uid: seen.uid });
    }
    // A link's own mode means nothing (it is always 0777): it can only be replaced, which its
    // directory's mode governs.
    let sticky_root_dir = seen.kind == Kind::Dir && seen.uid == 0 && seen.mode & 0o1000 != 0;
    if seen.kind != Kind::Symlink && seen.mode & 0o022 != 0 && !sticky_root_dir {
        return Err(Problem::Writable {
            mode: seen.mode & 0o7777,
        });
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// `at` (the file, or a directory or link on the way to it) cannot be trusted.
    #[error("{} {}", at.display(), describe(problem, *euid))]
    Untrusted {
        at: PathBuf,
        problem: Problem,
        euid: u32,
    },
}

impl TrustError {
    /// What to run to fix it.
    pub fn fix(&self) -> Option<String> {
        let TrustError::Untrusted { at, problem, euid } = self else {
            return None;
        };
        let at = at.display();
        let owner = match euid {
            0 => "root:root".to_owned(),
            n => n.to_string(),
        };
        Some(match problem {
            Problem::Symlink => format!(
                "give drover the file itself, not a link to it: replace {at} with the file, or \
                 point --config at $(realpath {at})"
            ),
            Problem::NotAFile | Problem::NotADirectory => {
                "point --config at the config file".into()
            }
            Problem::Owner { .. } | Problem::Writable { .. } => {
                format!("chown {owner} {at} && chmod go-w {at}")
            }
        })
    }
}

fn describe(problem: &Problem, euid: u32) -> String {
    let owners = match euid {
        0 => "root".to_owned(),
        n => format!("root or uid {n} (the user running drover)"),
    };
    match problem {
        Problem::Symlink => "is a symbolic link".into(),
        Problem::NotAFile => "is not a regular file".into(),
        Problem::NotADirectory => "is not a directory".into(),
        Problem::Owner { uid } => format!("is owned by uid {uid}, not {owners}"),
        Problem::Writable { mode } => {
            format!("is writable by group or others (mode {mode:04o})")
        }
    }
}

/// At most this many symbolic links on the way, as the kernel allows (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Reads `path` if nobody but root or the running user could have written it or the way to it.
pub fn read_to_string(path: &Path) -> Result<String, TrustError> {
    let fd = open_trusted(path, false)?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(text)
}

/// Whether the directory `path` (a config's drop-ins, say) is one nobody but root or the running
/// user could have changed, nor the way to it: whoever could would decide which files are in it,
/// removing one as surely as adding one.
pub fn check_dir(path: &Path) -> Result<(), TrustError> {
    open_trusted(path, true).map(drop)
}

/// `path`, opened step by step from `/` and each step judged: a regular file, or with `dir` a
/// directory, at the end.
fn open_trusted(path: &Path, dir_wanted: bool) -> Result<OwnedFd, TrustError> {
    let absolute = match path.is_absolute() {
        true => path.to_owned(),
        false => std::env::current_dir()?.join(path),
    };
    let euid = rustix::process::geteuid().as_raw();
    let check = |at: &Path, seen: Seen, last: bool| {
        judge(seen, last, euid).map_err(|problem| TrustError::Untrusted {
            at: at.to_owned(),
            problem,
            euid,
        })
    };
    let mut rest: Vec<OsString> = Vec::new();
    push_front(&mut rest, &absolute);
    let (mut dir, mut at) = open_root(&check)?;
    let mut links = 0;
    while let Some(name) = rest.pop() {
        let last = rest.is_empty();
        if last {
            let kind = match dir_wanted {
                true => OFlags::DIRECTORY,
                false => OFlags::NONBLOCK | OFlags::NOCTTY,
            };
            let fd = rustix::fs::openat(
                &dir,
                name.as_os_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | kind,
                Mode::empty(),
            );
            at.push(&name);
            let fd = match fd {
                // O_NOFOLLOW on a link.
                Err(rustix::io::Errno::LOOP) => {
                    return Err(TrustError::Untrusted {
                        at,
                        problem: Problem::Symlink,
                        euid,
                    })
                }
                other => other.map_err(std::io::Error::from)?,
            };
            // A directory is judged as a step on the way is (O_DIRECTORY made sure it is one).
            check(&at, seen(&fd)?, !dir_wanted)?;
            return Ok(fd);
        }
        let fd = rustix::fs::openat(
            &dir,
            name.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)?;
        let step = seen(&fd)?;
        let step_at = match name.as_bytes() {
            b".." => at.parent().unwrap_or(Path::new("/")).to_owned(),
            _ => at.join(&name),
        };
        check(&step_at, step, false)?;
        if step.kind == Kind::Symlink {
            links += 1;
            if links > MAX_LINKS {
                return Err(std::io::Error::from(rustix::io::Errno::LOOP).into());
            }
            // The link itself, through the O_PATH descriptor it was judged by.
            let target =
                rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(std::io::Error::from)?;
            let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
            push_front(&mut rest, &target);
            if target.is_absolute() {
                (dir, at) = open_root(&check)?;
            }
            continue;
        }
        (dir, at) = (fd, step_at);
    }
    // A path of `/` alone, or ending in `..`.
    Err(TrustError::Untrusted {
        at,
        problem: Problem::NotAFile,
        euid,
    })
}

/// `/`, opened and judged.
fn open_root(
    check: &impl Fn(&Path, Seen, bool) -> Result<(), TrustError>,
) -> Result<(OwnedFd, PathBuf), TrustError> {
    let root = rustix::fs::openat(
        rustix::fs::CWD,
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)?;
    check(Path::new("/"), seen(&root)?, false)?;
    Ok((root, PathBuf::from("/")))
}

/// Puts `path`'s names in front of `rest` (a stack: the next name is last).
fn push_front(rest: &mut Vec<OsString>, path: &Path) {
    let names = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    });
    let names: Vec<OsString> = names.collect();
    rest.extend(names.into_iter().rev());
}

fn seen(fd: &OwnedFd) -> Result<Seen, TrustError> {
    let stat = rustix::fs::fstat(fd).map_err(std::io::Error::from)?;
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    };
    Ok(Seen {
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(kind: Kind, mode: u32, uid: u32) -> Seen {
        Seen { kind, mode, uid }
    }

    #[test]
    fn the_file_is_root_s_or_the_user_s_and_written_by_its_owner_only() {
        let file = |mode, uid, euid| judge(seen(Kind::File, mode, uid), true, euid);
        assert_eq!(file(0o600, 0, 0), Ok(()));
        assert_eq!(file(0o644, 0, 0), Ok(()));
        assert_eq!(file(0o444, 0, 0), Ok(()));
        assert_eq!(file(0o664, 0, 0), Err(Problem::Writable { mode: 0o664 }));
        assert_eq!(file(0o646, 0, 0), Err(Problem::Writable { mode: 0o646 }));
        assert_eq!(file(0o620, 0, 0), Err(Problem::Writable { mode: 0o620 }));
        // The sticky bit is no excuse for a file.
        assert_eq!(file(0o1666, 0, 0), Err(Problem::Writable { mode: 0o1666 }));
        assert_eq!(file(0o600, 1000, 0), Err(Problem::Owner { uid: 1000 }));
        // An operator's own config, for the commands run as that operator; not another's.
        assert_eq!(file(0o644, 1000, 1000), Ok(()));
        assert_eq!(file(0o644, 0, 1000), Ok(()));
        assert_eq!(file(0o644, 1001, 1000), Err(Problem::Owner { uid: 1001 }));
        for (kind, problem) in [
            (Kind::Symlink, Problem::Symlink),
            (Kind::Dir, Problem::NotAFile),
            (Kind::Other, Problem::NotAFile),
        ] {
            assert_eq!(judge(seen(kind, 0o644, 0), true, 0), Err(problem));
        }
    }

    #[test]
    fn the_way_to_it_is_written_by_its_owner_only_or_sticky_and_root_s() {
        let dir = |mode, uid, euid| judge(seen(Kind::Dir, mode, uid), false, euid);
        assert_eq!(dir(0o755, 0, 0), Ok(()));
        assert_eq!(dir(0o700, 0, 0), Ok(()));
        assert_eq!(dir(0o775, 0, 0), Err(Problem::Writable { mode: 0o775 }));
        assert_eq!(dir(0o777, 0, 0), Err(Problem::Writable { mode: 0o777 }));
        assert_eq!(dir(0o755, 1000, 0), Err(Problem::Owner { uid: 1000 }));
        // /tmp: nobody can rename or remove another's entry in it.
        assert_eq!(dir(0o1777, 0, 0), Ok(()));
        assert_eq!(dir(0o1777, 0, 1000), Ok(()));
        // ...but only root's; a user's sticky directory is that user's to rearrange.
        assert_eq!(
            dir(0o1777, 1000, 1000),
            Err(Problem::Writable { mode: 0o1777 })
        );
        assert_eq!(dir(0o755, 1000, 1000), Ok(()));
        assert_eq!(dir(0o755, 1001, 1000), Err(Problem::Owner { uid: 1001 }));
        // A link on the way: its owner counts, its mode (always 0777) does not.
        let link = |uid, euid| judge(seen(Kind::Symlink, 0o777, uid), false, euid);
        assert_eq!(link(0, 0), Ok(()));
        assert_eq!(link(1000, 0), Err(Problem::Owner { uid: 1000 }));
        assert_eq!(
            judge(seen(Kind::File, 0o644, 0), false, 0),
            Err(Problem::NotADirectory)
        );
        assert_eq!(
            judge(seen(Kind::Other, 0o644, 0), false, 0),
            Err(Problem::NotADirectory)
        );
    }

    #[test]
    fn errors_name_the_step_and_the_fix() {
        let e = TrustError::Untrusted {
            at: "/etc/drover/config.toml".into(),
            problem: Problem::Writable { mode: 0o664 },
            euid: 0,
        };
        assert_eq!(
            e.to_string(),
            "/etc/drover/config.toml is writable by group or others (mode 0664)"
        );
        assert_eq!(
            e.fix().unwrap(),
            "chown root:root /etc/drover/config.toml && chmod go-w /etc/drover/config.toml"
        );
        let e = TrustError::Untrusted {
            at: "/home/op/drover.toml".into(),
            problem: Problem::Owner { uid: 1001 },
            euid: 1000,
        };
        assert_eq!(
            e.to_string(),
            "/home/op/drover.toml is owned by uid 1001, not root or uid 1000 (the user running \
             drover)"
        );
        assert!(e
            .fix()
            .unwrap()
            .starts_with("chown 1000 /home/op/drover.toml"));
    }
}
