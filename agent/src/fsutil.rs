//! On-disk changes that survive a crash: write a temporary file, fsync it, rename it into place,
//! fsync the directory. Also the few syscalls std has no wrapper for: `syncfs(2)`,
//! `sync_file_range(2)` and `statvfs(3)`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An I/O error with the path it is about.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct PathError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub trait IoContext<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, PathError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: &Path) -> Result<T, PathError> {
        self.map_err(|source| PathError {
            op,
            path: path.to_owned(),
            source,
        })
    }
}

/// Replaces `path` with `bytes` atomically: readers see the old content or the new, never a mix,
/// also after a crash or power loss.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PathError> {
    let dir = parent(path);
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .at("create", &tmp)?;
    file.write_all(bytes).at("write", &tmp)?;
    file.sync_all().at("fsync", &tmp)?;
    drop(file);
    fs::rename(&tmp, path).at("rename into place", path)?;
    sync_dir(dir)
}

/// Makes a rename or unlink in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), PathError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("fsync directory", dir)
}

pub fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Flushes every dirty page of the filesystem holding `path`: one call instead of an fsync per
/// file of a release that may have tens of thousands of them.
pub fn sync_filesystem(path: &Path) -> Result<(), PathError> {
    use std::os::fd::AsRawFd;
    let dir = File::open(path).at("open", path)?;
    #[allow(unsafe_code)]
    // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the whole call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error()).at("syncfs", path)
    }
}

/// Starts writing `len` bytes of `file` from `offset` back to the disk without waiting for it, as
/// dpkg does while it unpacks. A later [`sync_filesystem`] then finds most of the data already on
/// the disk instead of all of it dirty in memory: the disk works while the CPU inflates. Only a
/// hint: an error shows again, and is reported, at that `syncfs`.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    #[allow(unsafe_code)]
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the whole call; no memory is
    // passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub fn free_space(path: &Path) -> Result<u64, PathError> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        .at("statvfs", path)?;
    #[allow(unsafe_code)]
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a properly sized out-value,
    // both alive for the whole call; statvfs writes only into `stat`.
    let (rc, stat) = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        let rc = libc::statvfs(c_path.as_ptr(), &mut stat);
        (rc, stat)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).at("statvfs", path);
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Whether an I/O error is the machine's own (a full disk, a broken disk, a file system or
/// process out of something, permissions on our own directories) and would have hit any input,
/// rather than a consequence of the input itself (a name the file system refuses, one link too
/// many). Callers decide with it whether to retry later or reject what they were given.
pub fn is_machine_fault(e: &io::Error) -> bool {
    const MACHINE: [i32; 18] = [
        libc::ENOSPC,
        libc::EDQUOT,
        libc::EIO,
        // A file system that found itself corrupt (ext4, XFS), or a network one gone away.
        libc::EUCLEAN,
        libc::EBADMSG,
        libc::ENOTCONN,
        libc::ENOLINK,
        libc::EROFS,
        libc::ENOMEM,
        libc::EMFILE,
        libc::ENFILE,
        libc::EACCES,
        libc::EPERM,
        libc::EBUSY,
        libc::EAGAIN,
        libc::EINTR,
        libc::ESTALE,
        libc::ETIMEDOUT,
    ];
    match e.raw_os_error() {
        Some(errno) => MACHINE.contains(&errno),
        // Not from the system: std refusing a path with a NUL byte, say, which only the input
        // can cause.
        None => false,
    }
}

/// Replaces `path` with `text` whole, mode 0644: a temporary file in the same directory (a
/// hidden name, which a collector of `*.prom` files does not read) renamed over it, so that a
/// scrape sees the old file or the new one. Everything is done through one descriptor of the
/// directory, opened without following a link: its owner (node_exporter's user, say) cannot
/// send root's create, rename or unlink elsewhere by swapping names, and the temporary name is
/// new each time (`O_EXCL`), so nothing put in its way is followed or blocks the write. Not
/// synced to disk: after a crash the next pass writes it again, and a sync after every poll
/// would cost more than it saves.
pub fn write_textfile(path: &Path, text: &str) -> Result<(), PathError> {
    use rustix::fs::{Mode, OFlags};
    let dir_path = crate::fsutil::parent(path);
    let io = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
    let dir = rustix::fs::open(
        dir_path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io)
    .at("open directory", dir_path)?;
    let name = path.file_name().unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = format!(
        ".{}.{}.{nanos}.tmp",
        name.to_string_lossy(),
        std::process::id()
    );
    let tmp_path = dir_path.join(&tmp);
    let fd = rustix::fs::openat(
        &dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )
    .map_err(io)
    .at("create", &tmp_path)?;
    let mut file = std::fs::File::from(fd);
    let written = rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))
        .map_err(io)
        .at("chmod", &tmp_path)
        .and_then(|()| std::io::Write::write_all(&mut file, text.as_bytes()).at("write", &tmp_path))
        .and_then(|()| {
            rustix::fs::renameat(&dir, tmp.as_str(), &dir, name)
                .map_err(io)
                .at("rename into place", path)
        });
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), rustix::fs::AtFlags::empty());
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn write_atomic_replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("state.json")],
            "no temporary file left"
        );
    }

    #[test]
    fn errors_carry_the_path() {
        let err = write_atomic(Path::new("/nonexistent-dir/x"), b"", 0o600).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/"), "{err}");
    }

    #[test]
    fn free_space_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(Path::new("/nonexistent-dir")).is_err());
    }

    #[test]
    fn syncfs_works_on_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        sync_filesystem(dir.path()).unwrap();
    }

    #[test]
    fn the_file_is_replaced_whole_with_mode_0644_through_no_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drover.prom");
        // A link where a temporary file might be guessed to go, to a file that must stay as it
        // is, and a directory made to block a fixed name: neither is followed or in the way.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".drover.prom.tmp")).unwrap();
        std::fs::create_dir(dir.path().join(".drover.prom.1.0.tmp")).unwrap();
        write_textfile(&path, "a 1\n").unwrap();
        write_textfile(&path, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b 2\n");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o644);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                ".drover.prom.1.0.tmp",
                ".drover.prom.tmp",
                "drover.prom",
                "victim"
            ]
        );
        let missing = dir.path().join("no/such/dir/drover.prom");
        let error = write_textfile(&missing, "").unwrap_err().to_string();
        assert!(
            error.contains("open directory") && error.contains("no/such/dir"),
            "{error}"
        );
        // Nor is a link in place of the directory.
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(dir.path(), &linked).unwrap();
        assert!(write_textfile(&linked.join("drover.prom"), "").is_err());
    }
}
