//! The unpacker against archives built byte by byte: what it makes, what it refuses, why.

use super::*;
use flate2::write::GzEncoder;
use std::os::unix::fs::MetadataExt;

const LIMITS: Limits = Limits {
    max_unpacked_size: 1 << 20,
    max_entries: 100,
};

/// Builds a .tar.gz from raw headers, so tests can write names the tar crate would refuse.
struct Tgz {
    tar: Vec<u8>,
}

impl Tgz {
    fn new() -> Self {
        Self { tar: Vec::new() }
    }

    fn entry(
        mut self,
        name: &str,
        kind: tar::EntryType,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> Self {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.tar.extend_from_slice(h.as_bytes());
        self.tar.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.tar.extend(std::iter::repeat_n(0, pad));
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name, tar::EntryType::Regular, 0o644, "", data)
    }

    fn gz(mut self) -> Vec<u8> {
        self.tar.extend(std::iter::repeat_n(0, 1024));
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&self.tar).unwrap();
        enc.finish().unwrap()
    }

    /// The same archive as `drover publish --format zstd` compresses it.
    fn zst(mut self) -> Vec<u8> {
        self.tar.extend(std::iter::repeat_n(0, 1024));
        let mut enc = compression::zstd_writer(Vec::new()).unwrap();
        enc.write_all(&self.tar).unwrap();
        enc.finish().unwrap()
    }
}

fn run(bytes: &[u8]) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
    run_with(bytes, LIMITS)
}

fn run_with(bytes: &[u8], limits: Limits) -> (tempfile::TempDir, Result<Unpacked, UnpackError>) {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar.gz");
    fs::write(&archive, bytes).unwrap();
    let dest = dir.path().join("out");
    fs::create_dir(&dest).unwrap();
    let result = unpack(&archive, &dest, &limits);
    (dir, result)
}

fn hit_entry_cap(result: &Result<Unpacked, UnpackError>) -> bool {
    matches!(
        result,
        Err(UnpackError::Limit {
            what: "entry count",
            ..
        })
    )
}

fn unsafe_reason(bytes: &[u8]) -> String {
    match run(bytes).1 {
        Err(UnpackError::Unsafe { entry, reason }) => format!("{entry}: {reason}"),
        other => panic!("expected an unsafe entry, got {other:?}"),
    }
}

#[test]
fn unpacks_files_dirs_and_inner_links() {
    use tar::EntryType as T;
    let bytes = Tgz::new()
        .entry("./", T::Directory, 0o755, "", b"")
        .file("./bin/app", b"#!/bin/sh\n")
        .entry("bin/run", T::Symlink, 0o777, "app", b"")
        .entry("lib/x/../../bin/y", T::Symlink, 0o777, "", b"")
        .gz();
    // A `..` in the name is refused even when it would stay inside.
    assert!(unsafe_reason(&bytes).contains("\"..\""));

    let bytes = Tgz::new()
        .file("bin/app", b"#!/bin/sh\n")
        .entry("bin/run", T::Symlink, 0o777, "app", b"")
        .entry("top", T::Symlink, 0o777, "bin/../bin/app", b"")
        .entry("bin/hard", T::Link, 0o644, "bin/app", b"")
        .entry("etc", T::Directory, 0o750, "", b"")
        .gz();
    let (dir, result) = run(&bytes);
    let stats = result.unwrap();
    assert_eq!((stats.files, stats.links, stats.bytes), (1, 3, 10));
    let out = dir.path().join("out");
    assert_eq!(fs::read(out.join("bin/run")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::read(out.join("top")).unwrap(), b"#!/bin/sh\n");
    assert_eq!(fs::metadata(out.join("bin/hard")).unwrap().nlink(), 2);
    assert_eq!(fs::metadata(out.join("etc")).unwrap().mode() & 0o777, 0o750);
}

#[test]
fn rejects_escapes() {
    use tar::EntryType as T;
    assert!(unsafe_reason(&Tgz::new().file("/etc/passwd", b"x").gz()).contains("absolute"));
    assert!(unsafe_reason(&Tgz::new().file("../escape", b"x").gz()).contains(".."));
    assert!(unsafe_reason(&Tgz::new().file("a/../../escape", b"x").gz()).contains(".."));
    let out = Tgz::new().entry("l", T::Symlink, 0o777, "../..", b"").gz();
    assert!(unsafe_reason(&out).contains("outside"));
    let abs = Tgz::new().entry("l", T::Symlink, 0o777, "/etc", b"").gz();
    assert!(unsafe_reason(&abs).contains("absolute"));
    // A symlink, then a file written through it.
    let through = Tgz::new()
        .entry("d", T::Symlink, 0o777, "sub", b"")
        .file("d/x", b"x")
        .gz();
    assert!(unsafe_reason(&through).contains("parent \"d\" is a symlink"));
    // A symlink, then a directory of the same name.
    let same = Tgz::new()
        .entry("d", T::Symlink, 0o777, ".", b"")
        .entry("d", T::Directory, 0o777, "", b"")
        .gz();
    assert!(unsafe_reason(&same).contains("duplicate"));
    // A chain that only the walk on disk catches.
    let chain = Tgz::new()
        .entry("a", T::Symlink, 0o777, ".", b"")
        .entry("b", T::Symlink, 0o777, "a/..", b"")
        .gz();
    assert!(unsafe_reason(&chain).contains("outside"));
}

#[test]
fn rejects_bad_hard_links_and_special_files() {
    use tar::EntryType as T;
    let out = Tgz::new()
        .entry("h", T::Link, 0o644, "../etc/passwd", b"")
        .gz();
    assert!(unsafe_reason(&out).contains("hard link"));
    let later = Tgz::new()
        .entry("h", T::Link, 0o644, "f", b"")
        .file("f", b"x")
        .gz();
    assert!(unsafe_reason(&later).contains("not a regular file earlier"));
    assert!(
        unsafe_reason(&Tgz::new().entry("dev", T::Char, 0o644, "", b"").gz()).contains("device")
    );
    assert!(
        unsafe_reason(&Tgz::new().entry("dev", T::Block, 0o644, "", b"").gz()).contains("device")
    );
    assert!(unsafe_reason(&Tgz::new().entry("p", T::Fifo, 0o644, "", b"").gz()).contains("fifo"));
    assert!(unsafe_reason(&Tgz::new().file("f", b"1").file("f", b"2").gz()).contains("duplicate"));
}

#[test]
fn setuid_and_setgid_bits_are_dropped() {
    let bytes = Tgz::new()
        .entry("suid", tar::EntryType::Regular, 0o4755, "", b"x")
        .entry("sgid", tar::EntryType::Regular, 0o2755, "", b"x")
        .gz();
    let (dir, result) = run(&bytes);
    assert_eq!(result.unwrap().modes_stripped, 2);
    for f in ["suid", "sgid"] {
        assert_eq!(
            fs::metadata(dir.path().join("out").join(f)).unwrap().mode() & 0o7777,
            0o755
        );
    }
}

/// Issue 13, finding 4: `./` and a directory named again are members like any other, and a
/// repeated directory costs no memory.
#[test]
fn every_member_counts_against_the_entry_cap() {
    use tar::EntryType as T;
    let limits = Limits {
        max_unpacked_size: 1 << 20,
        max_entries: 10,
    };
    for name in ["./", "d/"] {
        let many = (0..11).fold(Tgz::new(), |t, _| {
            t.entry(name, T::Directory, 0o755, "", b"")
        });
        let (_d, result) = run_with(&many.gz(), limits);
        assert!(hit_entry_cap(&result), "{name}: {result:?}");
    }
    // Directories made for a member's parents count too.
    let deep = Tgz::new().file("a/b/c/d/e/f/g/h/i/j/k", b"x");
    let (_d, result) = run_with(&deep.gz(), limits);
    assert!(hit_entry_cap(&result), "{result:?}");
    let fine = (0..10).fold(Tgz::new(), |t, _| {
        t.entry("d/", T::Directory, 0o750, "", b"")
    });
    let (_d, result) = run_with(&fine.gz(), limits);
    assert_eq!(result.unwrap().dirs, 1);
}

/// Issue 13, finding 3: what the system refuses to make of an entry is the archive's fault.
#[test]
fn entries_the_system_refuses_are_the_archives_fault() {
    use tar::EntryType as T;
    // A NUL byte in a symlink target, as a PAX linkpath can carry.
    let mut pax = Vec::new();
    let record = b"linkpath=a\0b\n";
    let len = record.len() + 3;
    pax.extend_from_slice(format!("{len} ").as_bytes());
    pax.extend_from_slice(record);
    let nul = Tgz::new()
        .entry("././@PaxHeader", T::XHeader, 0o644, "", &pax)
        .entry("l", T::Symlink, 0o777, "x", b"")
        .gz();
    assert!(
        unsafe_reason(&nul).contains("NUL"),
        "{}",
        unsafe_reason(&nul)
    );
    // Too deep for the tree walks.
    let deep = vec!["d"; MAX_DEPTH + 1].join("/");
    assert!(normalize(deep.as_bytes()).unwrap_err().contains("deeper"));
    // Whatever errno the system gives for an entry: the artifact's fault, unless it is the
    // machine's own.
    let refused = |errno| UnpackError::Refused {
        entry: "x".into(),
        op: "create hard link",
        source: io::Error::from_raw_os_error(errno),
    };
    assert!(refused(libc::EMLINK).is_artifact_fault());
    assert!(refused(libc::ENAMETOOLONG).is_artifact_fault());
    assert!(refused(libc::EINVAL).is_artifact_fault());
    assert!(!refused(libc::ENOSPC).is_artifact_fault());
    assert!(!refused(libc::EIO).is_artifact_fault());
    assert!(!refused(libc::EUCLEAN).is_artifact_fault());
    // Reading the downloaded file failed: the machine's fault, not "corrupt".
    assert!(!corrupt(io::Error::from_raw_os_error(libc::EIO)).is_artifact_fault());
    assert!(corrupt(io::Error::new(io::ErrorKind::InvalidData, "bad")).is_artifact_fault());
}

/// Issue 13, finding 9: no group or world write survives, and a sticky directory does not
/// become a plain world-writable one.
#[test]
fn group_and_world_write_are_dropped() {
    use tar::EntryType as T;
    let bytes = Tgz::new()
        .entry("open", T::Directory, 0o777, "", b"")
        .entry("tmp", T::Directory, 0o1777, "", b"")
        .entry("open/f", T::Regular, 0o666, "", b"x")
        .entry("g", T::Regular, 0o775, "", b"x")
        .gz();
    let (dir, result) = run(&bytes);
    let stats = result.unwrap();
    assert_eq!(stats.writable_stripped, 4);
    let out = dir.path().join("out");
    let mode = |p: &str| fs::metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("open"), 0o755);
    assert_eq!(mode("tmp"), 0o755);
    assert_eq!(mode("open/f"), 0o644);
    assert_eq!(mode("g"), 0o755);
    assert!(stripped_note(&stats).contains("group/world write of 4"));
}

#[test]
fn caps_stop_bombs() {
    let big = vec![0u8; 2 << 20];
    let (_d, result) = run(&Tgz::new().file("big", &big).gz());
    assert!(
        matches!(
            result,
            Err(UnpackError::Limit {
                what: "unpacked size",
                ..
            })
        ),
        "{result:?}"
    );
    let many = (0..101).fold(Tgz::new(), |t, i| t.file(&format!("f{i}"), b""));
    let (_d, result) = run(&many.gz());
    assert!(hit_entry_cap(&result), "{result:?}");
}

#[test]
fn corrupt_streams_are_rejected() {
    let good = Tgz::new().file("f", b"hello").gz();
    let (_d, ok) = run(&good);
    ok.unwrap();
    let (_d, r) = run(&good[..good.len() - 6]);
    assert!(
        matches!(r, Err(UnpackError::Corrupt(_))),
        "truncated: {r:?}"
    );
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"garbage");
    let (_d, r) = run(&trailing);
    assert!(matches!(r, Err(UnpackError::Corrupt(_))), "trailing: {r:?}");
    let (_d, r) = run(b"this is not gzip at all");
    assert!(matches!(r, Err(UnpackError::Corrupt(_))), "not gzip: {r:?}");
    let (_d, r) = run(&Tgz::new().gz());
    assert!(matches!(r, Err(UnpackError::Corrupt(_))), "empty: {r:?}");
}

/// Every rule holds the same behind zstd as behind gzip: each archive here, compressed both
/// ways, gives the same outcome and the same message.
#[test]
fn zstd_archives_meet_the_same_rules() {
    use tar::EntryType as T;
    type Make = fn() -> Tgz;
    let archives: Vec<(&str, Make)> = vec![
        ("good", || {
            Tgz::new()
                .entry("d/", T::Directory, 0o755, "", b"")
                .file("d/f", b"hello")
                .entry("l", T::Symlink, 0o777, "d/f", b"")
        }),
        ("traversal", || Tgz::new().file("../evil", b"x")),
        ("absolute", || Tgz::new().file("/etc/evil", b"x")),
        ("link out", || {
            Tgz::new()
                .entry("l", T::Symlink, 0o777, "/etc", b"")
                .file("l/passwd", b"x")
        }),
        ("device", || {
            Tgz::new().entry("dev", T::Char, 0o644, "", b"")
        }),
        ("bomb", || Tgz::new().file("big", &vec![0u8; 2 << 20])),
        ("entries", || {
            (0..101).fold(Tgz::new(), |t, i| t.file(&format!("f{i}"), b""))
        }),
        ("empty", Tgz::new),
    ];
    for (what, make) in archives {
        let (_a, gz) = run(&make().gz());
        let (_b, zst) = run(&make().zst());
        let show = |r: &Result<Unpacked, UnpackError>| match r {
            Ok(stats) => format!("ok {stats:?}"),
            Err(e) => format!("{e} (artifact's fault: {})", e.is_artifact_fault()),
        };
        assert_eq!(show(&gz), show(&zst), "{what}");
    }
}

#[test]
fn corrupt_zstd_streams_are_rejected() {
    let good = Tgz::new().file("f", b"hello").zst();
    run(&good).1.unwrap();
    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated", good[..good.len() - 6].to_vec()),
        ("trailing", [&good[..], b"garbage"].concat()),
        ("flipped", {
            let mut b = good.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0xff;
            b
        }),
    ];
    for (what, bytes) in cases {
        let (_d, r) = run(&bytes);
        assert!(matches!(r, Err(UnpackError::Corrupt(_))), "{what}: {r:?}");
    }
}

/// A frame whose window is over 8 MiB (`zstd --long=27`, say) is refused before its memory is
/// given, with a message saying why.
#[test]
fn a_zstd_window_over_8_mib_is_refused() {
    let mut tar = Tgz::new().file("f", &vec![7u8; 64 << 10]).tar;
    tar.extend(std::iter::repeat_n(0, 1024));
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(27).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&tar).unwrap();
    let bytes = enc.finish().unwrap();
    let (_d, r) = run(&bytes);
    let message = match &r {
        Err(e @ UnpackError::Corrupt(_)) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(message.contains("over the 8 MiB allowed"), "{message}");
}
