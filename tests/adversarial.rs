//! Hostile artifacts, through the real parts: each archive below is built here, uploaded to moto
//! with a matching `.sha256` (the attacker controls the bucket, so the digest is no defence), and
//! promoted; the real `drover once` fetches it with the AWS SDK. Every one must be rejected with
//! an `artifact_rejected` event that names the entry and the reason (setuid bits are neutralised
//! instead), leave no release directory and no staging behind, keep `current` where it was, and
//! write nothing anywhere outside the staging area.
//!
//! The table of inputs and what drover said about each is printed (`--nocapture`) and recorded in
//! docs/RELIABILITY.md.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use drover_tests::host::{stderr, Host};
use drover_tests::release::{gzip, noise, raw_tar_gz, RawEntry};
use drover_tests::World;

/// Small caps, so that the bombs are cheap to build: 16 MiB unpacked, 1000 entries.
const CAPS: &str = "max_unpacked_size = \"16MiB\"\nmax_entries = 1000\n";

struct Case {
    name: &'static str,
    archive: Vec<u8>,
    /// Every one of these must appear in the rejection's ERROR.
    expect: &'static [&'static str],
}

fn case(name: &'static str, entries: &[RawEntry], expect: &'static [&'static str]) -> Case {
    Case {
        name,
        archive: raw_tar_gz(entries),
        expect,
    }
}

fn app() -> RawEntry {
    RawEntry::file("VERSION", b"evil\n")
}

/// Where an escaping entry would land if it got out: beside the release root.
const OUTSIDE: &str = "../../../../outside/pwned";

/// Where an absolute entry would land if it got out.
const ABS_TARGET: &str = "/var/tmp/drover-adversarial-pwned";

fn corpus() -> Vec<Case> {
    let good = raw_tar_gz(&[app(), RawEntry::file("app.py", &noise(64 << 10))]);
    let many: Vec<RawEntry> = (0..1001)
        .map(|i| RawEntry::file(&format!("f{i}"), b""))
        .collect();
    let long_gnu = vec![b'a'; 100_000];
    let long_pax = "d/".repeat(2100) + "f";
    // TARmageddon: the ustar size says 0, so a reader that trusts it takes the PAX-sized data
    // as the next header, which an attacker fills with an entry of their choosing.
    let mut smuggled = RawEntry::file("smuggled", b"hidden").header_bytes();
    smuggled.resize(1024, 0);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let mut trailing = good.clone();
    trailing.extend_from_slice(b"trailing garbage after the gzip stream");
    vec![
        case(
            "absolute path",
            &[app(), RawEntry::file(ABS_TARGET, b"x")],
            &[ABS_TARGET, "absolute path"],
        ),
        case(
            "../ traversal",
            &[app(), RawEntry::file(OUTSIDE, b"x")],
            &[OUTSIDE, "\\\"..\\\""],
        ),
        case(
            "symlink out, then a file through it",
            &[
                RawEntry::symlink("lib", "../../../../outside"),
                RawEntry::file("lib/pwned", b"x"),
            ],
            &["lib", "points outside the release"],
        ),
        case(
            "symlink inside, then a file through it",
            &[
                RawEntry::dir("sub"),
                RawEntry::symlink("lib", "sub"),
                RawEntry::file("lib/pwned", b"x"),
            ],
            &["lib/pwned", "parent \\\"lib\\\" is a symlink"],
        ),
        case(
            "symlink, then a directory of the same name (chmod outside)",
            &[
                RawEntry::symlink("d", "."),
                RawEntry::dir("d").with_mode(0o777),
            ],
            &["d", "duplicate entry"],
        ),
        case(
            "symlink chain that resolves outside",
            &[RawEntry::symlink("a", "."), RawEntry::symlink("b", "a/..")],
            &["b", "outside the release"],
        ),
        case(
            "hard link to outside",
            &[
                app(),
                RawEntry::hardlink("passwd", "../../../../../etc/passwd"),
            ],
            &["passwd", "hard link target"],
        ),
        case(
            "hard link to an absolute path",
            &[app(), RawEntry::hardlink("shadow", "/etc/shadow")],
            &["shadow", "link to absolute path"],
        ),
        case(
            "hard link to a later entry",
            &[
                RawEntry::hardlink("early", "late"),
                RawEntry::file("late", b"x"),
            ],
            &["early", "not a regular file earlier in the archive"],
        ),
        case(
            "character device",
            &[app(), RawEntry::char_device("null")],
            &["null", "device node"],
        ),
        case(
            "block device",
            &[app(), RawEntry::block_device("sda")],
            &["sda", "device node"],
        ),
        case("fifo", &[app(), RawEntry::fifo("pipe")], &["pipe", "fifo"]),
        case(
            "PAX size disagrees with the ustar size",
            &[
                RawEntry::pax(&[("size", "1024")]),
                RawEntry::file("cover", &smuggled).with_declared_size(0),
            ],
            &["PAX size 1024 disagrees with the header's size 0"],
        ),
        case(
            "huge declared size",
            &[RawEntry::file("huge", b"").with_declared_size(1 << 40)],
            &["huge", "unpacked size limit of 16777216"],
        ),
        Case {
            name: "decompression bomb (1 GiB of zeros)",
            archive: bomb(1 << 30),
            expect: &["zeros", "unpacked size limit of 16777216"],
        },
        Case {
            name: "too many entries (1001)",
            archive: raw_tar_gz(&many),
            expect: &["f1000", "entry count limit of 1000"],
        },
        case(
            "name longer than 4096 bytes (PAX path)",
            &[
                RawEntry::pax(&[("path", &long_pax)]),
                RawEntry::file("x", b""),
            ],
            &[
                "d/d/d/d/",
                "... (4201 bytes)",
                "path longer than 4096 bytes",
            ],
        ),
        case(
            "GNU long name of 100 kB",
            &[RawEntry::gnu_long_name(&long_gnu), RawEntry::file("x", b"")],
            &[
                "@LongLink",
                "extended header of 100001 bytes exceeds the limit",
            ],
        ),
        case(
            "non-UTF-8 name",
            &[
                RawEntry::gnu_long_name(b"caf\xe9.txt"),
                RawEntry::file("x", b""),
            ],
            &["caf", "name is not UTF-8"],
        ),
        case(
            "duplicate entries",
            &[
                RawEntry::file("config", b"one"),
                RawEntry::file("config", b"two"),
            ],
            &["config", "duplicate entry"],
        ),
        Case {
            name: "truncated gzip",
            archive: truncated,
            expect: &["archive is corrupt", "app.py"],
        },
        Case {
            name: "trailing garbage",
            archive: trailing,
            expect: &["data after the end of the gzip stream"],
        },
        Case {
            name: "not gzip at all",
            archive: b"#!/bin/sh\necho this is a script, not a tarball\n".to_vec(),
            expect: &["archive is corrupt", "invalid gzip header"],
        },
        Case {
            name: "empty archive",
            archive: gzip(&[0u8; 1024]),
            expect: &["archive has no entries"],
        },
    ]
}

/// One file of `size` zero bytes: a few hundred kB of gzip that would unpack to `size`.
fn bomb(size: u64) -> Vec<u8> {
    use flate2::write::GzEncoder;
    use std::io::Write;
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros").expect("name");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_cksum();
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(header.as_bytes()).expect("gzip");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        gz.write_all(&zeros).expect("gzip");
    }
    gz.write_all(&[0u8; 1024]).expect("gzip");
    gz.finish().expect("gzip")
}

/// Every path under `dir` with its size and mode, except the agent's state directory (which a
/// rejection updates on purpose).
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(dir)
                .expect("inside")
                .display()
                .to_string();
            if rel == "state" || rel == "artifacts" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            out.insert(rel, (meta.len(), meta.mode()));
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

fn rejection_line(out: &str) -> Option<&str> {
    out.lines()
        .find(|l| l.contains("event=\"artifact_rejected\""))
}

#[test]
fn hostile_archives_are_rejected_and_nothing_is_written_outside() {
    let world = World::new("adversarial");
    let endpoint = world.moto.endpoint();
    let host = Host::with_artifact_keys(world, &endpoint, CAPS, "");
    host.world.release("1.0.0", true);
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/1.0.0");

    let _ = std::fs::remove_file(ABS_TARGET);
    let before = snapshot(host.world.dir());
    let mut table = Vec::new();
    for (i, case) in corpus().into_iter().enumerate() {
        let version = format!("evil-{i}");
        host.upload_and_promote(&version, &case.archive);
        let out = host.drover(&["once"]);
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{}: {text}", case.name);
        let line = rejection_line(&text)
            .unwrap_or_else(|| panic!("{}: no artifact_rejected event in\n{text}", case.name));
        for expected in case.expect {
            assert!(
                line.contains(expected),
                "{}: {expected:?} not in\n{line}",
                case.name
            );
        }
        assert!(line.contains(&format!("version=\"{version}\"")), "{line}");
        assert_eq!(host.current(), "releases/1.0.0", "{}", case.name);
        assert_eq!(
            host.release_dirs(),
            (vec!["1.0.0".to_string()], vec![]),
            "{}: a release or staging was left behind",
            case.name
        );
        assert_eq!(
            snapshot(host.world.dir()),
            before,
            "{}: something changed outside the staging area",
            case.name
        );
        assert!(!Path::new(ABS_TARGET).exists(), "{}", case.name);
        assert_eq!(host.status()["last"]["result"], "rejected", "{}", case.name);
        let error = line.split("error=").nth(1).unwrap_or("").to_owned();
        table.push((case.name, case.archive.len(), error));
    }

    println!("| input | bytes | ERROR |\n|---|---:|---|");
    for (name, len, error) in &table {
        println!("| {name} | {len} | {} |", error.replace('|', "\\|"));
    }
}

#[test]
fn setuid_and_setgid_bits_are_dropped_not_rejected() {
    let world = World::new("setuid");
    let endpoint = world.moto.endpoint();
    let host = Host::with_artifact_keys(world, &endpoint, CAPS, "");
    let archive = raw_tar_gz(&[
        RawEntry::file("VERSION", b"1\n"),
        RawEntry::file("bin/suid", b"#!/bin/sh\n").with_mode(0o4755),
        RawEntry::file("bin/sgid", b"#!/bin/sh\n").with_mode(0o2755),
        RawEntry::dir("shared").with_mode(0o3777),
    ]);
    host.upload_and_promote("1", &archive);
    let out = host.drover(&["once"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("dropped setuid/setgid/sticky bits of 3"),
        "{text}"
    );
    let release = host.root().join("releases/1");
    let mode = |p: &str| std::fs::metadata(release.join(p)).expect("stat").mode() & 0o7777;
    assert_eq!(mode("bin/suid"), 0o755);
    assert_eq!(mode("bin/sgid"), 0o755);
    assert_eq!(mode("shared"), 0o777);
}
