//! What must hold for every input the fuzz targets feed drover, whatever drover answers.
//!
//! A failed `assert!` here, like a panic inside drover, is a crash to libFuzzer: it stops and
//! writes the input to `artifacts/<target>/`. Errors returned by drover are fine; they are the
//! point of these parsers. Besides "never panics", each check says what an `Ok` must mean.

use std::ffi::OsString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use drover::digest::{parse_sha256sum, Sha256Digest};
use drover::unpack::{unpack, Limits};
use drover::value::{parse_value, Desired};

pub mod tree;
use tree::{check_release, names, walk, Kind};

/// Small caps, so that inputs of a few kilobytes reach the limit checks too.
pub const LIMITS: Limits = Limits {
    max_unpacked_size: 64 * 1024,
    max_entries: 32,
};

const ARCHIVE: &str = "archive.tar.gz";
const DEST: &str = "dest";

/// The parameter value: a bare version or a JSON object.
pub fn check_value(data: &[u8]) {
    // The parameter is a string: SSM hands over UTF-8 only.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let desired = match parse_value(text) {
        Ok(desired) => desired,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let version = desired.version.as_str();
    assert!(
        is_version(version),
        "accepted {version:?}, which is not a version"
    );
    if !text.trim().starts_with('{') {
        assert_eq!(version, text.trim(), "a bare value is the version itself");
        assert_eq!(desired.sha256, None);
    }
    // What was accepted reads back the same: as a bare version, and as JSON.
    assert_eq!(
        parse_value(version),
        Ok(Desired {
            version: desired.version.clone(),
            sha256: None,
            rollout: None,
        })
    );
    // A rollout gives every position a turn, at any time it was put: never a panic.
    if let Some(rollout) = &desired.rollout {
        let epoch = std::time::SystemTime::UNIX_EPOCH;
        for put_at in [epoch, std::time::SystemTime::now()] {
            for position in [0.0, 0.5, 0.999_999] {
                let turn = rollout.turn(position, put_at);
                assert!(turn.at >= rollout.start.unwrap_or(put_at));
            }
        }
    }
    let sha256 = match desired.sha256 {
        Some(d) => format!("\"{d}\""),
        None => "null".to_owned(),
    };
    // A version has no character that JSON would need escaped.
    let json = format!("{{\"version\": \"{version}\", \"sha256\": {sha256}}}");
    let without_rollout = Desired {
        rollout: None,
        ..desired
    };
    assert_eq!(parse_value(&json), Ok(without_rollout));
}

/// `^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`, written out independently of drover's parser.
fn is_version(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._+-".contains(c))
}

/// The first line of a `.sha256` file.
pub fn check_sha256sum(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let digest = match parse_sha256sum(text) {
        Ok(digest) => digest,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let hex = digest.to_string();
    assert!(
        hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
        "digest printed as {hex:?}"
    );
    assert_eq!(hex.parse::<Sha256Digest>(), Ok(digest));
    let first = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("");
    assert_eq!(
        first.to_ascii_lowercase(),
        hex,
        "the digest is the first word of the first line"
    );
}

/// The `unpack_tar` target: `data` is a tar stream. It is padded to whole 512-byte blocks, its
/// header checksums are corrected and it is gzipped before it is unpacked, so that a mutated
/// header reaches the code behind those checks (names, links, sizes, extended headers) instead
/// of failing at them; `unpack_targz` keeps the framing, checksum and gzip failures covered.
pub fn check_unpack_tar(data: &[u8]) {
    let mut tar = data.to_vec();
    tar.resize(tar.len().next_multiple_of(512), 0);
    fix_tar_checksums(&mut tar);
    check_unpack(&gzip(&tar));
}

/// As [`check_unpack_tar`], the tar stream compressed with zstd: the same rules must hold behind
/// either decompressor. Level 1 with a checksum: the decoder reads any level the same way, and
/// level 9 (what `drover publish --format zstd` uses) ran ten times fewer inputs a second.
pub fn check_unpack_tar_zstd(data: &[u8]) {
    let mut tar = data.to_vec();
    tar.resize(tar.len().next_multiple_of(512), 0);
    fix_tar_checksums(&mut tar);
    let mut zst = zstd::stream::write::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    zst.include_checksum(true).expect("zstd");
    zst.write_all(&tar).expect("zstd");
    check_unpack(&zst.finish().expect("zstd"));
}

/// Rewrites the checksum of each header found by walking the stream as a reader would: a
/// 512-byte header, then its data rounded up to 512 bytes. Stops at a size it cannot read.
/// (A PAX `size` record would move the next header; the walk does not follow it.)
pub fn fix_tar_checksums(tar: &mut [u8]) {
    let mut at = 0usize;
    while let Some(header) = tar.get_mut(at..at + 512) {
        if header.iter().all(|&b| b == 0) {
            at += 512;
            continue;
        }
        let sum: u32 = header
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let Some(size) = tar_number(&header[124..136]) else {
            return;
        };
        let Some(next) = size
            .checked_next_multiple_of(512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| (at + 512).checked_add(s))
        else {
            return;
        };
        at = next;
    }
}

/// A tar numeric field: octal text (spaces and NULs around it), or GNU base-256.
fn tar_number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        return field[1..]
            .iter()
            .try_fold(u64::from(field[0] & 0x7f), |n, &b| {
                n.checked_mul(256)?.checked_add(u64::from(b))
            });
    }
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c| c == ' ' || c == '\0');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// gzip around a tar stream, so that the fuzzer's mutations land in the tar layer instead of
/// breaking the gzip CRC.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("writing to a Vec cannot fail");
    gz.finish().expect("writing to a Vec cannot fail")
}

/// `DROVER_FUZZ_VERBOSE=1` prints what the unpacker said of each input: run a target binary on
/// corpus files to see which of them are accepted and why the others are not.
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("DROVER_FUZZ_VERBOSE").is_some_and(|v| v == "1"))
}

/// One directory per fuzzing process, on tmpfs when there is one: thousands of small trees a
/// second are cheaper in memory than on a disk.
/// `DROVER_FUZZ_TMPDIR` chooses the parent (fuzz.sh points it at a directory it removes after).
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let base = std::env::var_os("DROVER_FUZZ_TMPDIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        tempfile::Builder::new()
            .prefix("drover-fuzz-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot make a directory in {}: {e}", base.display()))
            .keep()
    })
}

/// Unpacks `archive` into a fresh empty directory, as the agent does in `.staging/`, and checks
/// that nothing was made outside it; when the archive is accepted, also that the release holds
/// only what the unpacker promises.
///
/// Layout: `<root>/<work>/{archive.tar.gz, dest/}`. Afterwards `<root>` must hold only `<work>`
/// and `<work>` only those two: an entry that escaped `dest` by a `..` or through a symlink
/// lands in one of them.
pub fn check_unpack(archive: &[u8]) {
    let root = root();
    let work = tempfile::Builder::new()
        .prefix("w")
        .tempdir_in(root)
        .expect("cannot make the work directory");
    let archive_path = work.path().join(ARCHIVE);
    let dest = work.path().join(DEST);
    fs::write(&archive_path, archive).expect("cannot write the archive");
    fs::create_dir(&dest).expect("cannot make dest");

    let result = unpack(&archive_path, &dest, &LIMITS);
    if verbose() {
        match &result {
            Ok(stats) => eprintln!("unpack: accepted {stats:?}"),
            Err(e) => eprintln!("unpack: rejected: {e}"),
        }
    }

    assert_eq!(
        names(root),
        [work
            .path()
            .file_name()
            .expect("a temp dir has a name")
            .to_owned()],
        "something was created beside the work directory ({result:?})"
    );
    assert_eq!(
        names(work.path()),
        [OsString::from(ARCHIVE), OsString::from(DEST)],
        "something was created beside dest ({result:?})"
    );
    let meta = fs::symlink_metadata(&archive_path).expect("the archive is gone");
    assert!(
        meta.is_file() && meta.len() == archive.len() as u64,
        "the archive was replaced or changed ({result:?})"
    );
    assert!(
        fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()),
        "dest is no longer a directory"
    );

    if let Ok(stats) = result {
        let tree = walk(&dest).unwrap_or_else(|e| panic!("accepted, but {e}"));
        if let Err(e) = check_release(&dest, &tree) {
            panic!("accepted, but {e}");
        }
        let symlinks = tree.iter().filter(|e| e.kind == Kind::Symlink).count() as u64;
        let files = tree.iter().filter(|e| e.kind == Kind::File).count() as u64;
        let dirs = tree.iter().filter(|e| e.kind == Kind::Dir).count() as u64;
        assert!(files + dirs + symlinks > 0, "an empty release was accepted");
        assert_eq!(
            stats.files + stats.dirs + stats.links,
            files + dirs + symlinks,
            "the reported counts {stats:?} are not what is on disk"
        );
        assert!(stats.bytes <= LIMITS.max_unpacked_size);
    }
    tree::remove_all(&work.keep());
}
