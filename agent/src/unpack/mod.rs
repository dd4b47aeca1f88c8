//! Safe unpacking of a verified `.tar.gz` or `.tar.zst` (told apart by their magic bytes,
//! [`compression`]) into an empty staging directory.
//!
//! The archive is hostile until proven otherwise. The whole artifact is rejected when an entry
//! would land outside the release (absolute paths, `..`, writing through a symlink, links that
//! point out, hard links to anything but a regular file unpacked earlier), when it is a device
//! node or fifo, a duplicate, or when the archive breaks a size or entry-count cap (every member
//! counts, `./` and repeated directories too). setuid, setgid and sticky bits, and group and
//! world write, are dropped: a release is read-only to everyone but its owner. Nothing is
//! written outside `dest`: every parent of every entry is a real directory this unpacker made,
//! and files are created with `O_EXCL`. Whatever the system refuses to create from an entry (a
//! name too long once joined to `dest`, one link too many) is the archive's fault, not the
//! machine's, unless the reason is the machine's own (a full disk, an I/O error): see
//! [`UnpackError::is_artifact_fault`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::fsutil::IoContext;
use crate::tarheader::{Extended, Member};

pub mod compression;
mod error;
mod paths;
pub use error::UnpackError;
use error::{
    corrupt, map_read_error, read_error, shorten, unsafe_entry, CapExceeded, EntryContext,
};
pub use paths::normalize;
use paths::{lexically_inside, resolve_inside};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest sum of file sizes.
    pub max_unpacked_size: u64,
    pub max_entries: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    /// Entries whose setuid/setgid/sticky bits were dropped.
    pub modes_stripped: u64,
    /// Entries whose group or world write bits were dropped.
    pub writable_stripped: u64,
}

/// Header and padding bytes a tar stream may carry beyond its file contents.
const OVERHEAD_PER_ENTRY: u64 = 3 * 512;
/// Zero padding after the end-of-archive marker that we are prepared to read through.
const MAX_TRAILER: u64 = 1 << 20;
const MAX_NAME: usize = 255;
const MAX_PATH: usize = 4096;
/// Deepest nesting of a name; the tree walks that give a release away and prune it
/// ([`crate::tree`]) hold one descriptor per level.
const MAX_DEPTH: usize = crate::tree::MAX_DEPTH / 2;
/// How much of a large file is written before its writeback is started.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// Unpacks `archive` into the empty directory `dest`. Nothing is flushed: the caller syncs the
/// tree ([`crate::fsutil::sync_filesystem`]) before anything relies on it, once, after whatever else
/// it does to the tree (`[release] owner`'s chown).
pub fn unpack(archive: &Path, dest: &Path, limits: &Limits) -> Result<Unpacked, UnpackError> {
    let file = File::open(archive).at("open", archive)?;
    let compressed = BufReader::with_capacity(256 * 1024, file);
    let decoder = compression::Decoder::new(compressed)?;
    let format = decoder.format();
    // Bounds everything read from the decompressed stream, GNU long names and PAX headers
    // included, which the tar crate would otherwise buffer in memory whole.
    let stream_cap = limits
        .max_unpacked_size
        .saturating_add(limits.max_entries.saturating_mul(OVERHEAD_PER_ENTRY))
        .saturating_add(MAX_TRAILER);
    let capped = CapReader {
        inner: decoder,
        left: stream_cap,
        limit: limits.max_unpacked_size,
    };
    let mut tar = tar::Archive::new(capped);
    let mut ex = Extractor::new(dest, *limits);
    // Raw entries: extended headers are ours to read, with a small cap (see tarheader).
    let mut extended = Extended::default();
    let mut last = String::new();
    for entry in tar.entries().map_err(corrupt)?.raw(true) {
        let mut entry = entry.map_err(|e| read_error(e, &last))?;
        let header_name = String::from_utf8_lossy(&entry.header().path_bytes()).into_owned();
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::XGlobalHeader {
            // Stands alone, so it counts as a member: a stream of them is bounded by the cap.
            ex.count(&header_name)?;
        }
        if matches!(
            kind,
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader
        ) {
            let declared = entry.size();
            Extended::check_size(declared).map_err(|r| unsafe_entry(&header_name, r))?;
            let mut bytes = Vec::with_capacity(declared as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| map_read_error(e, &header_name))?;
            extended
                .absorb(kind, bytes)
                .map_err(|r| unsafe_entry(&header_name, r))?;
            continue;
        }
        let member = extended
            .apply(entry.header())
            .map_err(|r| unsafe_entry(&header_name, r))?;
        last = String::from_utf8_lossy(&member.name).into_owned();
        ex.entry(&member, &mut entry)?;
    }
    if extended.is_pending() {
        return Err(UnpackError::Corrupt(
            "extended header at the end, without a member".into(),
        ));
    }
    if ex.stats.files + ex.stats.dirs + ex.stats.links == 0 {
        return Err(UnpackError::Corrupt("archive has no entries".into()));
    }
    // Read to the end of the gzip member (or the last zstd frame) so its checksum and length
    // are checked, then make sure nothing follows it.
    let mut capped = tar.into_inner();
    let trailer = io::copy(&mut (&mut capped).take(MAX_TRAILER + 1), &mut io::sink())
        .map_err(|e| read_error(e, &last))?;
    if trailer > MAX_TRAILER {
        return Err(UnpackError::Corrupt(
            "data after the end of the tar archive".into(),
        ));
    }
    let mut compressed = capped.inner.into_compressed();
    if !compressed.fill_buf().map_err(corrupt)?.is_empty() {
        return Err(UnpackError::Corrupt(format!(
            "data after the end of the {} stream",
            format.name()
        )));
    }
    ex.finish()
}

struct CapReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CapReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One byte more than allowed means the stream is over the cap.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CapExceeded(self.limit))),
            };
        }
        let max = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..max])?;
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

struct Extractor<'a> {
    dest: &'a Path,
    limits: Limits,
    seen: HashMap<String, Kind>,
    /// Members and directories made for them so far, against `limits.max_entries`.
    entries: u64,
    /// Directory modes, applied at the end so a read-only directory cannot block its children;
    /// one per directory, however often the archive names it.
    dir_modes: HashMap<String, u32>,
    symlinks: Vec<String>,
    stats: Unpacked,
    buf: Vec<u8>,
}

impl<'a> Extractor<'a> {
    fn new(dest: &'a Path, limits: Limits) -> Self {
        Self {
            dest,
            limits,
            seen: HashMap::new(),
            entries: 0,
            dir_modes: HashMap::new(),
            symlinks: Vec::new(),
            stats: Unpacked::default(),
            buf: vec![0; 256 * 1024],
        }
    }

    /// Counts one member, or one directory made for one, against the entry cap.
    fn count(&mut self, name: &str) -> Result<(), UnpackError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(UnpackError::Limit {
                entry: shorten(name),
                what: "entry count",
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        member: &Member,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let raw_name = String::from_utf8_lossy(&member.name).into_owned();
        let normalized = normalize(&member.name).map_err(|r| unsafe_entry(&raw_name, r))?;
        self.count(normalized.as_deref().unwrap_or(&raw_name))?;
        let name = match normalized {
            Some(name) => name,
            None => return Ok(()), // the archive's own root, "./"
        };
        let header = entry.header();
        let full_mode = header.mode().map_err(corrupt)?;
        // Read-only to all but the owner; see the module's comment.
        let mode = full_mode & 0o755;
        if full_mode & 0o7000 != 0 {
            self.stats.modes_stripped += 1;
        }
        if full_mode & 0o022 != 0 && !header.entry_type().is_symlink() {
            self.stats.writable_stripped += 1;
        }
        let kind = header.entry_type();
        match self.seen.get(&name) {
            Some(Kind::Dir) if kind.is_dir() => {}
            Some(_) => return Err(unsafe_entry(&name, "duplicate entry")),
            None => {}
        }
        let path = self.dest.join(&name);
        if path.as_os_str().len() >= MAX_PATH {
            return Err(unsafe_entry(
                &name,
                format!(
                    "path of {} bytes once unpacked in {}, over the system's limit of {MAX_PATH}",
                    path.as_os_str().len(),
                    self.dest.display()
                ),
            ));
        }
        self.ensure_parents(&name)?;
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous => {
                let size = member.size;
                if self.stats.bytes.saturating_add(size) > self.limits.max_unpacked_size {
                    return Err(UnpackError::Limit {
                        entry: shorten(&name),
                        what: "unpacked size",
                        limit: self.limits.max_unpacked_size,
                    });
                }
                self.write_file(entry, &name, &path, mode)?;
                self.stats.files += 1;
                crate::failpoint::hit("mid_unpack");
                self.seen.insert(name, Kind::File);
            }
            T::Directory => {
                if !self.seen.contains_key(&name) {
                    fs::create_dir(&path).refused("create directory", &name)?;
                    self.stats.dirs += 1;
                    self.seen.insert(name.clone(), Kind::Dir);
                }
                self.dir_modes.insert(name, mode | 0o700);
            }
            T::Symlink => {
                let target = link_target(member, &name)?;
                if !lexically_inside(&name, &target) {
                    return Err(unsafe_entry(
                        &name,
                        format!("symlink to {target:?} points outside the release"),
                    ));
                }
                std::os::unix::fs::symlink(&target, &path).refused("create symlink", &name)?;
                self.stats.links += 1;
                self.symlinks.push(name.clone());
                self.seen.insert(name, Kind::Symlink);
            }
            T::Link => {
                let target = link_target(member, &name)?;
                let target = normalize(target.as_bytes())
                    .map_err(|r| unsafe_entry(&name, format!("hard link target: {r}")))?
                    .unwrap_or_default();
                if self.seen.get(&target) != Some(&Kind::File) {
                    return Err(unsafe_entry(
                        &name,
                        format!("hard link to {target:?}, which is not a regular file earlier in the archive"),
                    ));
                }
                fs::hard_link(self.dest.join(&target), &path).refused("create hard link", &name)?;
                self.stats.links += 1;
                self.seen.insert(name, Kind::File);
            }
            T::Char | T::Block => return Err(unsafe_entry(&name, "device node")),
            T::Fifo => return Err(unsafe_entry(&name, "fifo")),
            other => {
                let byte = other.as_byte();
                return Err(unsafe_entry(
                    &name,
                    format!(
                        "unsupported entry type {:?} (0x{byte:02x})",
                        char::from(byte)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Creates missing parent directories; every existing parent must be a directory that this
    /// unpacker made, never a symlink or a file.
    fn ensure_parents(&mut self, name: &str) -> Result<(), UnpackError> {
        let mut end = 0;
        while let Some(i) = name[end..].find('/') {
            let parent = &name[..end + i];
            match self.seen.get(parent) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(unsafe_entry(
                        name,
                        format!("parent {parent:?} is a symlink"),
                    ))
                }
                Some(Kind::File) => {
                    return Err(unsafe_entry(name, format!("parent {parent:?} is a file")))
                }
                None => {
                    self.count(parent)?;
                    let path = self.dest.join(parent);
                    fs::create_dir(&path).refused("create directory", parent)?;
                    self.stats.dirs += 1;
                    self.seen.insert(parent.to_owned(), Kind::Dir);
                    // Its mode set like any other, whatever the umask; a later member naming
                    // it replaces this.
                    self.dir_modes.insert(parent.to_owned(), 0o755);
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        entry: &mut R,
        name: &str,
        path: &Path,
        mode: u32,
    ) -> Result<(), UnpackError> {
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .refused("create", name)?;
        let (mut written, mut kicked) = (0u64, 0u64);
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(map_read_error(e, name)),
            };
            out.write_all(&self.buf[..n]).refused("write", name)?;
            self.stats.bytes += n as u64;
            written += n as u64;
            if written - kicked >= WRITEBACK_CHUNK {
                crate::fsutil::start_writeback(&out, kicked, written - kicked);
                kicked = written;
            }
        }
        if written > kicked {
            crate::fsutil::start_writeback(&out, kicked, written - kicked);
        }
        out.set_permissions(fs::Permissions::from_mode(mode))
            .refused("chmod", name)?;
        Ok(())
    }

    fn finish(mut self) -> Result<Unpacked, UnpackError> {
        for link in &self.symlinks {
            resolve_inside(self.dest, link).map_err(|r| unsafe_entry(link, r))?;
        }
        // Deepest first, so that a directory's own mode never stops us changing its children.
        let mut dir_modes: Vec<_> = self.dir_modes.drain().collect();
        dir_modes.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        for (name, mode) in &dir_modes {
            let path = self.dest.join(name);
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).refused("chmod", name)?;
        }
        Ok(self.stats)
    }
}

/// What was taken off the archive's modes, for the "Unpacked" message: empty when nothing was.
pub fn stripped_note(stats: &Unpacked) -> String {
    let mut note = String::new();
    if stats.modes_stripped > 0 {
        note += &format!(
            "; dropped setuid/setgid/sticky bits of {}",
            stats.modes_stripped
        );
    }
    if stats.writable_stripped > 0 {
        note += &format!("; dropped group/world write of {}", stats.writable_stripped);
    }
    note
}

fn link_target(member: &Member, name: &str) -> Result<String, UnpackError> {
    let target = member
        .link
        .as_deref()
        .ok_or_else(|| unsafe_entry(name, "link without a target"))?;
    let target = std::str::from_utf8(target)
        .map_err(|_| unsafe_entry(name, "link target is not UTF-8"))?
        .to_owned();
    if target.is_empty() {
        return Err(unsafe_entry(name, "link with an empty target"));
    }
    if target.contains('\0') {
        return Err(unsafe_entry(name, "link target contains a NUL byte"));
    }
    if target.len() >= MAX_PATH {
        return Err(unsafe_entry(
            name,
            format!("link target longer than {} bytes", MAX_PATH - 1),
        ));
    }
    if target.starts_with('/') {
        return Err(unsafe_entry(
            name,
            format!("link to absolute path {target:?}"),
        ));
    }
    Ok(target)
}

#[cfg(test)]
mod tests;
