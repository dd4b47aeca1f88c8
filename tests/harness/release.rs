//! Release artifacts for the tests: the sample app packed as drover expects it (a `.tar.gz` of
//! `app.py` and `VERSION` at its top level), and hostile tarballs written header by header, with
//! entry names and types that well-behaved tools refuse to produce.

use flate2::write::GzEncoder;
use flate2::Compression;
use std::fs;
use std::path::{Path, PathBuf};

/// The sample app's source (`tests/app/app.py`).
pub const APP_PY: &str = include_str!("../app/app.py");

/// Writes the sample app's release tree for `version` into `out/app-VERSION/` and returns that
/// directory: `app.py`, `VERSION`, and `UNHEALTHY` when the release must fail its health check.
pub fn app_dir(out: &Path, version: &str, healthy: bool) -> PathBuf {
    let dir = out.join(format!("app-{version}"));
    write(&dir.join("app.py"), APP_PY.as_bytes());
    write(&dir.join("VERSION"), format!("{version}\n").as_bytes());
    if !healthy {
        write(
            &dir.join("UNHEALTHY"),
            b"this release answers 500 on /health\n",
        );
    }
    dir
}

/// Packs [`app_dir`] as `out/VERSION.tar.gz` (entries relative to the release root) and returns
/// the tarball's path.
pub fn app_tarball(out: &Path, version: &str, healthy: bool) -> PathBuf {
    let dir = app_dir(out, version, healthy);
    let path = out.join(format!("{version}.tar.gz"));
    let mut builder = tar::Builder::new(gzip_file(&path));
    let mut names: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())))
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for name in names {
        builder
            .append_path_with_name(dir.join(&name), &name)
            .unwrap_or_else(|e| panic!("cannot add {name:?} to {}: {e}", path.display()));
    }
    finish(builder, &path);
    path
}

/// One entry of a hand-made tarball. The name and link target go into the header verbatim, so
/// they may be absolute or contain `..`.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub name: String,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub link: Option<String>,
    pub data: Vec<u8>,
    /// The size the header claims, when it is not the data's length.
    pub declared_size: Option<u64>,
}

impl RawEntry {
    /// A regular file, mode 0644.
    pub fn file(name: &str, data: &[u8]) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Regular, 0o644, None, data)
    }

    /// A directory, mode 0755.
    pub fn dir(name: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Directory, 0o755, None, b"")
    }

    /// A symbolic link to `target`.
    pub fn symlink(name: &str, target: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Symlink, 0o777, Some(target), b"")
    }

    /// A hard link to `target` (a path as named in the archive).
    pub fn hardlink(name: &str, target: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Link, 0o644, Some(target), b"")
    }

    /// A named pipe.
    pub fn fifo(name: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Fifo, 0o644, None, b"")
    }

    /// A character device (1,3: /dev/null's numbers).
    pub fn char_device(name: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Char, 0o644, None, b"")
    }

    /// A block device.
    pub fn block_device(name: &str) -> RawEntry {
        RawEntry::new(name, tar::EntryType::Block, 0o644, None, b"")
    }

    /// A PAX extended header (`x`) for the entry that follows, with these records.
    pub fn pax(records: &[(&str, &str)]) -> RawEntry {
        let mut data = Vec::new();
        for (key, value) in records {
            // The length counts itself: "LEN key=value\n".
            let body = key.len() + value.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
        }
        RawEntry::new(
            "./PaxHeaders/x",
            tar::EntryType::XHeader,
            0o644,
            None,
            &data,
        )
    }

    /// A GNU long-name header (`L`) naming the entry that follows with these raw bytes.
    pub fn gnu_long_name(name: &[u8]) -> RawEntry {
        let mut data = name.to_vec();
        data.push(0);
        RawEntry::new(
            "././@LongLink",
            tar::EntryType::GNULongName,
            0o644,
            None,
            &data,
        )
    }

    /// The same entry with a header that claims `size` bytes, whatever data follows it.
    pub fn with_declared_size(mut self, size: u64) -> RawEntry {
        self.declared_size = Some(size);
        self
    }

    /// The same entry with another mode (e.g. `0o4755` for setuid).
    pub fn with_mode(mut self, mode: u32) -> RawEntry {
        self.mode = mode;
        self
    }

    fn new(
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) -> RawEntry {
        RawEntry {
            name: name.to_string(),
            kind,
            mode,
            link: link.map(str::to_string),
            data: data.to_vec(),
            declared_size: None,
        }
    }

    /// This entry's 512-byte header, as it goes into the archive.
    pub fn header_bytes(&self) -> Vec<u8> {
        self.header().as_bytes().to_vec()
    }

    fn header(&self) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(self.kind);
        header.set_mode(self.mode);
        header.set_size(self.declared_size.unwrap_or(self.data.len() as u64));
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        if self.kind == tar::EntryType::Char {
            let _ = header.set_device_major(1);
            let _ = header.set_device_minor(3);
        }
        // `set_path` and `set_link_name` refuse `..` and absolute paths: write the bytes directly.
        let old = header.as_old_mut();
        put_field(&mut old.name, &self.name, "entry name");
        if let Some(link) = &self.link {
            put_field(&mut old.linkname, link, "link target");
        }
        header.set_cksum();
        header
    }
}

/// Packs `entries` in order into `out/FILE_NAME` (gzip-compressed) and returns its path.
pub fn raw_tarball(out: &Path, file_name: &str, entries: &[RawEntry]) -> PathBuf {
    let path = out.join(file_name);
    let bytes = raw_tar_gz(entries);
    fs::write(&path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The `.tar.gz` bytes of `entries` in order: each header, its data padded to 512 bytes, then
/// the end-of-archive marker. Headers go in verbatim, whatever size they claim.
pub fn raw_tar_gz(entries: &[RawEntry]) -> Vec<u8> {
    let mut tar = Vec::new();
    for entry in entries {
        tar.extend_from_slice(entry.header().as_bytes());
        tar.extend_from_slice(&entry.data);
        tar.resize(tar.len().next_multiple_of(512), 0);
    }
    tar.resize(tar.len() + 1024, 0);
    gzip(&tar)
}

/// Bytes that do not compress, the same on every run: xorshift64, one byte per step.
pub struct Noise(u64);

impl Default for Noise {
    fn default() -> Self {
        Noise(0x9E37_79B9_7F4A_7C15)
    }
}

impl Noise {
    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
    }
}

/// `len` bytes of [`Noise`] from its start: a tarball about as big as its content.
pub fn noise(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    Noise::default().fill(&mut bytes);
    bytes
}

/// `bytes`, gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes)
        .and_then(|()| gz.finish())
        .unwrap_or_else(|e| panic!("cannot gzip: {e}"))
}

/// The same tar stream as the `.tar.gz` `gz`, compressed as `drover publish --format zstd`
/// does; `None` when `gz` is not a whole gzip stream (a case about the gzip layer itself).
pub fn zstd_of_gzip(gz: &[u8]) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut tar = Vec::new();
    let mut decoder = flate2::bufread::GzDecoder::new(gz);
    decoder.read_to_end(&mut tar).ok()?;
    let rest = decoder.into_inner();
    if !rest.is_empty() {
        return None;
    }
    let mut zst = drover::unpack::compression::zstd_writer(Vec::new()).ok()?;
    zst.write_all(&tar).ok()?;
    zst.finish().ok()
}

/// The classic escape: a healthy-looking app release plus `../escape.txt`.
pub fn escaping_tarball(out: &Path, version: &str) -> PathBuf {
    raw_tarball(
        out,
        &format!("{version}.tar.gz"),
        &[
            RawEntry::file("app.py", APP_PY.as_bytes()),
            RawEntry::file("VERSION", format!("{version}\n").as_bytes()),
            RawEntry::file("../escape.txt", b"written outside the release\n"),
        ],
    )
}

fn put_field(field: &mut [u8], value: &str, what: &str) {
    let bytes = value.as_bytes();
    assert!(
        bytes.len() < field.len(),
        "{what} {value:?} is longer than a tar header allows ({} bytes)",
        field.len() - 1
    );
    field.fill(0);
    field[..bytes.len()].copy_from_slice(bytes);
}

fn gzip_file(path: &Path) -> GzEncoder<fs::File> {
    let file =
        fs::File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    GzEncoder::new(file, Compression::default())
}

fn finish(builder: tar::Builder<GzEncoder<fs::File>>, path: &Path) {
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|file| file.sync_all())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;

    fn entries(path: &Path) -> Vec<(String, tar::EntryType, Option<String>, u32)> {
        let mut archive = tar::Archive::new(GzDecoder::new(fs::File::open(path).unwrap()));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                let name = String::from_utf8(h.path_bytes().to_vec()).unwrap();
                let link = h
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.to_vec()).unwrap());
                (name, h.entry_type(), link, h.mode().unwrap())
            })
            .collect()
    }

    #[test]
    fn app_tarball_holds_the_release_at_its_top_level() {
        let tmp = tempfile::tempdir().unwrap();
        let sick = app_tarball(tmp.path(), "2.0.0", false);
        let names: Vec<String> = entries(&sick).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["UNHEALTHY", "VERSION", "app.py"]);
        let well = app_tarball(tmp.path(), "2.0.1", true);
        let names: Vec<String> = entries(&well).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["VERSION", "app.py"]);
    }

    #[test]
    fn raw_tarball_keeps_hostile_names_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = raw_tarball(
            tmp.path(),
            "bad.tar.gz",
            &[
                RawEntry::file("../escape.txt", b"x"),
                RawEntry::file("/etc/evil", b"x").with_mode(0o4755),
                RawEntry::symlink("out", "../../etc"),
                RawEntry::hardlink("hard", "/etc/shadow"),
                RawEntry::fifo("pipe"),
            ],
        );
        let got = entries(&path);
        assert_eq!(got[0].0, "../escape.txt");
        assert_eq!((got[1].0.as_str(), got[1].3), ("/etc/evil", 0o4755));
        assert_eq!(got[2].2.as_deref(), Some("../../etc"));
        assert_eq!(got[3].1, tar::EntryType::Link);
        assert_eq!(got[3].2.as_deref(), Some("/etc/shadow"));
        assert_eq!(got[4].1, tar::EntryType::Fifo);
    }
}
