//! The on-disk half of the archive checks: what an unpacked release may hold. Only std, so that
//! `fuzz.sh` can run this file's own tests with a bare `rustc --test` before fuzzing: an oracle
//! that cannot fail would make every fuzzing run look clean.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
}

pub struct Entry {
    /// Relative to the release.
    pub rel: PathBuf,
    pub kind: Kind,
    pub meta: fs::Metadata,
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("cannot list a directory").file_name())
        .collect();
    names.sort();
    names
}

/// Every entry under `dest`, symlinks not followed; anything but a directory, a regular file or
/// a symlink is an error.
pub fn walk(dest: &Path) -> Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(dest.join(&rel)).map_err(|e| format!("list {rel:?}: {e}"))? {
            let e = e.map_err(|e| format!("list {rel:?}: {e}"))?;
            let rel = rel.join(e.file_name());
            let meta = fs::symlink_metadata(dest.join(&rel)).map_err(|e| format!("{e}"))?;
            let t = meta.file_type();
            let kind = if t.is_dir() {
                todo.push(rel.clone());
                Kind::Dir
            } else if t.is_file() {
                Kind::File
            } else if t.is_symlink() {
                Kind::Symlink
            } else {
                return Err(format!("{rel:?} is {t:?}"));
            };
            out.push(Entry { rel, kind, meta });
        }
    }
    Ok(out)
}

/// No setuid, setgid or sticky bit; every symlink ends inside `dest`; no regular file has a name
/// outside `dest` (a hard link to an outside file shows as a link count above its names here).
pub fn check_release(dest: &Path, tree: &[Entry]) -> Result<(), String> {
    let mut names_of: HashMap<(u64, u64), u64> = HashMap::new();
    for e in tree {
        let mode = e.meta.permissions().mode();
        if e.kind != Kind::Symlink && mode & 0o7000 != 0 {
            return Err(format!(
                "{:?} kept setuid/setgid/sticky bits ({mode:o})",
                e.rel
            ));
        }
        match e.kind {
            Kind::File => *names_of.entry((e.meta.dev(), e.meta.ino())).or_default() += 1,
            Kind::Symlink if !resolves_inside(dest, &e.rel) => {
                return Err(format!(
                    "symlink {:?} -> {:?} leads out of the release",
                    e.rel,
                    fs::read_link(dest.join(&e.rel)).ok()
                ))
            }
            _ => {}
        }
    }
    for e in tree.iter().filter(|e| e.kind == Kind::File) {
        let inside = names_of[&(e.meta.dev(), e.meta.ino())];
        if e.meta.nlink() != inside {
            return Err(format!(
                "{:?} has {} links, {inside} of them in the release",
                e.rel,
                e.meta.nlink()
            ));
        }
    }
    Ok(())
}

/// Whether the symlink at `rel` ends inside `dest` when followed hop by hop, as the kernel
/// would; names that do not exist (yet) count as plain names. A loop counts as inside: it
/// reaches nothing.
pub fn resolves_inside(dest: &Path, rel: &Path) -> bool {
    let real_dest = fs::canonicalize(dest).expect("cannot resolve dest");
    // Where the target exists, the kernel's own answer.
    if let Ok(real) = fs::canonicalize(dest.join(rel)) {
        if !real.starts_with(&real_dest) {
            return false;
        }
    }
    let mut todo = parts(rel);
    let mut at: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        if part == ".." {
            if at.pop().is_none() {
                return false;
            }
            continue;
        }
        let mut path = dest.to_path_buf();
        path.extend(&at);
        path.push(&part);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 64 {
                    return true;
                }
                let target = fs::read_link(&path).expect("cannot read a symlink");
                if target.is_absolute() {
                    return false;
                }
                todo.extend(parts(&target));
            }
            _ => at.push(part),
        }
    }
    true
}

/// The components of a relative path as a stack (last first), without `.`.
fn parts(path: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// Removes `path` and everything under it, even directories that lost their write bits.
pub fn remove_all(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    let mut todo = vec![path.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    fs::remove_dir_all(path).unwrap_or_else(|e| panic!("cannot remove {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// `<tmp>/<unique>/{outside, dest/}`, removed on drop.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("drover-tree-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("dest")).unwrap();
            fs::write(dir.join("outside"), "x").unwrap();
            Self(dir)
        }
        fn dest(&self) -> PathBuf {
            self.0.join("dest")
        }
        fn check(&self) -> Result<(), String> {
            let dest = self.dest();
            check_release(&dest, &walk(&dest)?)
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            remove_all(&self.0);
        }
    }

    #[test]
    fn a_release_of_files_dirs_and_inner_links_passes() {
        let f = Fixture::new("ok");
        let d = f.dest();
        fs::create_dir_all(d.join("bin/sub")).unwrap();
        fs::write(d.join("bin/app"), "a").unwrap();
        fs::hard_link(d.join("bin/app"), d.join("app2")).unwrap();
        symlink("bin/app", d.join("run")).unwrap();
        symlink("../bin/app", d.join("bin/sub/up")).unwrap();
        symlink("missing/../bin", d.join("dangling-inside")).unwrap();
        symlink("loop", d.join("loop")).unwrap();
        assert_eq!(f.check(), Ok(()));
    }

    #[test]
    fn a_symlink_out_fails() {
        let f = Fixture::new("out");
        symlink("../outside", f.dest().join("l")).unwrap();
        assert!(f.check().unwrap_err().contains("leads out"));
    }

    #[test]
    fn a_chain_that_climbs_out_fails() {
        // Each link alone looks harmless as text; `b` resolves to dest/..
        let f = Fixture::new("chain");
        symlink(".", f.dest().join("a")).unwrap();
        symlink("a/..", f.dest().join("b")).unwrap();
        assert!(f.check().unwrap_err().contains("\"b\""));
    }

    #[test]
    fn a_dangling_symlink_out_fails() {
        let f = Fixture::new("dangling");
        symlink("missing/../../elsewhere", f.dest().join("l")).unwrap();
        assert!(f.check().is_err());
        let g = Fixture::new("absolute");
        symlink("/nonexistent", g.dest().join("l")).unwrap();
        assert!(g.check().is_err());
    }

    #[test]
    fn a_hard_link_to_an_outside_file_fails() {
        let f = Fixture::new("hard");
        fs::hard_link(f.0.join("outside"), f.dest().join("h")).unwrap();
        assert!(f.check().unwrap_err().contains("links"));
    }

    #[test]
    fn setuid_fails() {
        let f = Fixture::new("setuid");
        let p = f.dest().join("s");
        fs::write(&p, "s").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o4755)).unwrap();
        assert!(f.check().unwrap_err().contains("setuid"));
    }

    #[test]
    fn a_fifo_fails() {
        let f = Fixture::new("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(f.dest().join("p"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(f.check().unwrap_err().contains("\"p\""));
    }
}
