//! Tree walks that change owners or remove files, as root, in trees another user may be changing
//! at the same moment: a release given to `[release] owner`, and later taken back to be pruned.
//!
//! Every step goes through a directory file descriptor, never through a path string resolved
//! again from the top: a directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its
//! parent's descriptor, its entries are looked at with `fstatat(AT_SYMLINK_NOFOLLOW)`, changed
//! with `fchownat(AT_SYMLINK_NOFOLLOW)` or `fchown`/`fchmod` on the opened directory, and removed
//! with `unlinkat`. Swapping a directory for a symlink (`renameat2(RENAME_EXCHANGE)`) between two
//! steps therefore never makes root act on a file outside the tree. Paths appear only in errors.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Dir, FileType, Gid, Mode, OFlags, RenameFlags, Uid};

use crate::fsutil::{IoContext, PathError};
use crate::owner::Owner;

/// Deepest directory nesting [`give_tree`] walks (two open descriptors per level). It only ever
/// walks what the unpacker made, which refuses names deeper than half of this.
pub const MAX_DEPTH: usize = 256;

/// How deep [`remove_tree`] goes before it moves a directory up to the top of the tree being
/// removed instead of into it: removal holds at most this many descriptors, however deep a
/// tree the app's user built in its release.
const FLATTEN_DEPTH: usize = 32;

/// Gives everything below `root` to `owner`, links themselves rather than their targets.
/// A directory is given away only after everything in it: at no moment does the owner hold a
/// directory this walk still has to work in. `root` itself stays ours: moving a directory into
/// `releases/` (and out, to prune it) needs write permission on the directory itself, which a
/// root without CAP_DAC_OVERRIDE only has as its owner. Returns how many entries changed hands.
pub fn give_tree(root: &Path, owner: Owner) -> Result<u64, PathError> {
    let dir = open_root(root)?;
    let mut walk = Walk::new(root);
    let mut count = 0;
    walk.give(&dir, owner, &mut count)?;
    Ok(count)
}

/// Removes the tree at `path` (a directory or anything else; nothing there is fine), whoever
/// owns what is in it. Each directory is taken over before it is read: made ours (CAP_CHOWN)
/// and `0700` at once, on its descriptor, so its former owner can no longer add, rename or swap
/// anything in it, even from a descriptor or working directory it opened earlier. Files are not
/// chowned: unlinking needs only the directory. A directory deeper than a few dozen levels is
/// moved up to the top of the tree (it is ours by then) and removed from there, so no depth
/// wedges removal. The parent of `path` must be ours.
pub fn remove_tree(path: &Path) -> Result<(), PathError> {
    let (parent, name) = split(path)?;
    let parent_fd = rfs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from);
    let parent_fd = match parent_fd {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other.at("open", parent)?,
    };
    let mut walk = Walk::new(path);
    walk.remove_entry(parent_fd.as_fd(), &name)
}

/// Where a walk is. `path` is for messages only: the walk never resolves it.
struct Walk {
    path: PathBuf,
    depth: usize,
    /// While removing: the top of the tree, taken over, where deep directories are moved.
    top: Option<OwnedFd>,
    /// Directories moved up so far, for their new names.
    flattened: u64,
}

impl Walk {
    fn new(path: &Path) -> Self {
        Walk {
            path: path.to_owned(),
            depth: 0,
            top: None,
            flattened: 0,
        }
    }

    fn give(&mut self, dir: &OwnedFd, owner: Owner, count: &mut u64) -> Result<(), PathError> {
        let (uid, gid) = (Uid::from_raw(owner.uid), Gid::from_raw(owner.gid));
        // A listing of its own (rustix opens "." again): `dir` stays for the *at calls.
        let mut entries = Dir::read_from(dir)
            .map_err(io::Error::from)
            .at("list", &self.path)?;
        while let Some(entry) = entries.next() {
            let entry = entry.map_err(io::Error::from).at("list", &self.path)?;
            let name = entry.file_name();
            if is_dot(name) {
                continue;
            }
            let dir_fd = entries
                .fd()
                .map_err(io::Error::from)
                .at("list", &self.path)?;
            self.enter(name);
            let kind = self.kind(dir_fd, name)?;
            if kind == FileType::Directory {
                let sub = self.open_dir(dir_fd, name)?;
                self.down()?;
                self.give(&sub, owner, count)?;
                self.depth -= 1;
                rfs::fchown(&sub, Some(uid), Some(gid))
                    .map_err(io::Error::from)
                    .at("chown", &self.path)?;
            } else {
                rfs::chownat(
                    dir_fd,
                    name,
                    Some(uid),
                    Some(gid),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(io::Error::from)
                .at("chown", &self.path)?;
            }
            *count += 1;
            self.leave();
        }
        Ok(())
    }

    /// Removes `name` in `parent`, whatever it is.
    fn remove_entry(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<(), PathError> {
        // A directory's former owner may have swapped it for something else after we looked
        // (before we took over its parent): look again, a few times, then give up.
        for _ in 0..3 {
            let kind = match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                other => FileType::from_raw_mode(
                    other
                        .map_err(io::Error::from)
                        .at("stat", &self.path)?
                        .st_mode,
                ),
            };
            if kind != FileType::Directory {
                match rfs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
                    Err(rustix::io::Errno::ISDIR) => continue,
                    Err(e) => return Err(io::Error::from(e)).at("remove", &self.path),
                }
            }
            // O_PATH: its owner may have made it unreadable (0000), and we have no
            // CAP_DAC_OVERRIDE; taking it over needs no access to it.
            let handle = rfs::openat(
                parent,
                name,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            let handle = match handle {
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => continue,
                other => other.map_err(io::Error::from).at("open", &self.path)?,
            };
            self.take_over(&handle)?;
            if self.depth >= FLATTEN_DEPTH {
                // Ours now: move it up, where the top's listing finds it again.
                self.move_to_top(parent, name)?;
                return Ok(());
            }
            let dir = rfs::openat(
                &handle,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io::Error::from)
            .at("open", &self.path)?;
            if self.top.is_none() {
                self.top = Some(dir.try_clone().at("open", &self.path)?);
            }
            self.down()?;
            let emptied = self.remove_children(dir);
            self.depth -= 1;
            emptied?;
            match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => return Ok(()),
                Err(rustix::io::Errno::NOTEMPTY) => continue,
                Err(e) => return Err(io::Error::from(e)).at("remove", &self.path),
            }
        }
        Err(io::Error::other("kept changing while it was being removed")).at("remove", &self.path)
    }

    /// Moves `name` (a directory already taken over) from `parent` to the top of the tree.
    fn move_to_top(&mut self, parent: BorrowedFd<'_>, name: &CStr) -> Result<(), PathError> {
        let Some(top) = &self.top else {
            return Err(io::Error::other("no top to move to")).at("move", &self.path);
        };
        loop {
            self.flattened += 1;
            let new_name = format!(".flattened-{}", self.flattened);
            match rfs::renameat_with(parent, name, top, new_name.as_str(), RenameFlags::NOREPLACE) {
                Err(rustix::io::Errno::EXIST) => continue,
                other => return other.map_err(io::Error::from).at("move up", &self.path),
            }
        }
    }

    /// Makes the directory behind the `O_PATH` handle ours and `0700`. chown comes first
    /// because only the owner may chmod (drover has no CAP_FOWNER); the mode follows at once,
    /// and until it does the former owner can do only what it could before. Both act on the
    /// inode the handle holds: `fchownat(AT_EMPTY_PATH)`, and chmod through the handle's
    /// `/proc/self/fd` link (chmod has no `AT_EMPTY_PATH` before Linux 6.6's `fchmodat2`), which
    /// names that inode whatever happens to the directory's name.
    fn take_over(&self, dir: &OwnedFd) -> Result<(), PathError> {
        use std::os::fd::AsRawFd;
        let stat = rfs::fstat(dir)
            .map_err(io::Error::from)
            .at("stat", &self.path)?;
        let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
        if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
            rfs::chownat(dir, c"", Some(uid), Some(gid), AtFlags::EMPTY_PATH)
                .map_err(io::Error::from)
                .at("chown", &self.path)?;
        }
        if stat.st_mode & 0o7777 != 0o700 {
            rfs::chmod(
                format!("/proc/self/fd/{}", dir.as_raw_fd()),
                Mode::from_raw_mode(0o700),
            )
            .map_err(io::Error::from)
            .at("chmod", &self.path)?;
        }
        Ok(())
    }

    /// Empties a directory that is already ours. Listing while unlinking may skip entries, so
    /// it lists again until a listing finds nothing.
    fn remove_children(&mut self, dir: OwnedFd) -> Result<(), PathError> {
        loop {
            // A fresh listing each round (rustix opens "." again).
            let entries = Dir::read_from(&dir)
                .map_err(io::Error::from)
                .at("list", &self.path)?;
            let mut removed = 0;
            for entry in entries {
                let entry = entry.map_err(io::Error::from).at("list", &self.path)?;
                let name = entry.file_name();
                if is_dot(name) {
                    continue;
                }
                self.enter(name);
                self.remove_entry(dir.as_fd(), name)?;
                self.leave();
                removed += 1;
            }
            if removed == 0 {
                return Ok(());
            }
        }
    }

    fn kind(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<FileType, PathError> {
        let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)
            .at("stat", &self.path)?;
        Ok(FileType::from_raw_mode(stat.st_mode))
    }

    fn open_dir(&self, dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd, PathError> {
        open_nofollow_dir(dir, name)
            .map_err(io::Error::from)
            .at("open", &self.path)
    }

    fn down(&mut self) -> Result<(), PathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.depth -= 1;
            return Err(io::Error::other(format!(
                "more than {MAX_DEPTH} directory levels"
            )))
            .at("walk", &self.path);
        }
        Ok(())
    }

    fn enter(&mut self, name: &CStr) {
        self.path.push(std::ffi::OsStr::from_bytes(name.to_bytes()));
    }

    fn leave(&mut self) {
        self.path.pop();
    }
}

fn open_nofollow_dir(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens the top of a walk; the path leading to it must be ours, its last step not a symlink.
fn open_root(root: &Path) -> Result<OwnedFd, PathError> {
    rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .at("open", root)
}

fn split(path: &Path) -> Result<(&Path, CString), PathError> {
    let name = path
        .file_name()
        .and_then(|n| CString::new(n.as_bytes()).ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))
        .at("remove", path)?;
    Ok((crate::fsutil::parent(path), name))
}

fn is_dot(name: &CStr) -> bool {
    matches!(name.to_bytes(), b"." | b"..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn remove_takes_back_a_locked_tree_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/l")).unwrap();
        fs::set_permissions(tree.join("a/b"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::set_permissions(tree.join("a"), fs::Permissions::from_mode(0o500)).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").is_file(), "the link was not followed");
        assert_eq!(fs::metadata(&outside).unwrap().mode() & 0o7777, 0o750);
        // Nothing there is fine, and so is a plain file.
        remove_tree(&tree).unwrap();
        fs::write(&tree, b"x").unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn give_changes_every_entry_but_the_root_and_no_link_target() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, tree.join("a/l")).unwrap();
        let owner = Owner {
            uid: 4242,
            gid: 4343,
        };
        assert_eq!(give_tree(&tree, owner).unwrap(), 4);
        for p in ["a", "a/b", "a/b/f", "a/l"] {
            let m = fs::symlink_metadata(tree.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
        }
        assert_eq!(fs::metadata(&tree).unwrap().uid(), 0);
        assert_eq!(fs::metadata(&target).unwrap().uid(), 0);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    /// Issue 13 review: a tree deeper than any descriptor budget (its owner can build one in its
    /// release) is still removed, so it cannot wedge pruning or the staging area.
    #[test]
    fn a_tree_of_any_depth_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        fs::create_dir(&tree).unwrap();
        // Built relative to each new directory: the whole path would be over PATH_MAX.
        let mut fd = rfs::open(&tree, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        for _ in 0..3000 {
            rfs::mkdirat(&fd, "d", Mode::from_raw_mode(0o500)).unwrap();
            fd = rfs::openat(&fd, "d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        }
        rfs::openat(
            &fd,
            "f",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0),
        )
        .unwrap();
        drop(fd);
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
    }

    #[test]
    fn depth_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        let mut deep = tree.clone();
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let err = give_tree(&tree, Owner { uid: 1, gid: 1 }).unwrap_err();
        assert!(err.to_string().contains("directory levels"), "{err}");
    }
}
