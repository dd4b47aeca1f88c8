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

pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) archive: Vec<u8>,
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

pub(crate) fn corpus() -> Vec<Case> {
    let good = raw_tar_gz(&[app(), RawEntry::file("app.py", &noise(64 << 10))]);
    let many: Vec<RawEntry> = (0..1001)
        .map(|i| RawEntry::file(&format!("f{i}"), b""))
        .collect();
    let long_gnu = vec![b'a'; 100_000];
    let long_pax = "d/".repeat(2100) + "f";
    // 127 directories: a member in the last one is 128 levels deep, the most a name may be.
    let deepest = vec!["d"; 127].join("/");
    // 4,090 bytes: under the 4,096 a name may have, over it once below the release root.
    let near_path_max = format!("{}/", "a".repeat(250)).repeat(16) + &"b".repeat(74);
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
        case(
            "NUL byte in a symlink target (PAX linkpath)",
            &[
                app(),
                RawEntry::pax(&[("linkpath", "a\0b")]),
                RawEntry::symlink("nul", "x"),
            ],
            &["nul", "link target contains a NUL byte"],
        ),
        case(
            "path longer than PATH_MAX once joined to the release root",
            &[
                app(),
                RawEntry::pax(&[("path", &near_path_max)]),
                RawEntry::file("x", b"x"),
            ],
            &["over the system's limit of 4096"],
        ),
        case(
            "127 directories deep, then a fifo in them (staging must still be emptied)",
            &[
                app(),
                RawEntry::pax(&[("path", &deepest)]),
                RawEntry::dir("placeholder"),
                RawEntry::pax(&[("path", &format!("{deepest}/pipe"))]),
                RawEntry::fifo("placeholder"),
            ],
            &["(258 bytes)", "fifo"],
        ),
        case(
            "a name 129 levels deep",
            &[
                app(),
                RawEntry::pax(&[("path", &format!("{deepest}/d/f"))]),
                RawEntry::file("placeholder", b"x"),
            ],
            &["path deeper than 128 directory levels"],
        ),
        Case {
            name: "1001 repeats of ./ (each a member)",
            archive: raw_tar_gz(&vec![RawEntry::dir("./"); 1001]),
            expect: &["entry count limit of 1000"],
        },
        Case {
            name: "1001 repeats of d/ (each a member)",
            archive: raw_tar_gz(&vec![RawEntry::dir("d/"); 1001]),
            expect: &["\\\"d\\\"", "entry count limit of 1000"],
        },
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
            expect: &["archive is corrupt", "neither gzip nor zstd"],
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
    // Issue 13, finding 9: group and world write go too, and the sticky directory does not
    // become a plain world-writable one.
    assert!(text.contains("dropped group/world write of 1"), "{text}");
    let release = host.root().join("releases/1");
    let mode = |p: &str| std::fs::metadata(release.join(p)).expect("stat").mode() & 0o7777;
    assert_eq!(mode("bin/suid"), 0o755);
    assert_eq!(mode("bin/sgid"), 0o755);
    assert_eq!(mode("shared"), 0o755);
}

/// Issue 13, finding 3: one hard link more than ext4 allows to a file (65,000) is refused by
/// the system; that is the archive's doing, so it is rejected and remembered, not retried.
#[test]
fn more_hard_links_than_the_file_system_allows_is_a_rejection() {
    let world = World::new("emlink");
    let endpoint = world.moto.endpoint();
    let caps = "max_unpacked_size = \"16MiB\"\nmax_entries = 70000\n";
    let host = Host::with_artifact_keys(world, &endpoint, caps, "");
    let mut entries = vec![app(), RawEntry::file("f", b"x")];
    entries.extend((0..65_001).map(|i| RawEntry::hardlink(&format!("l{i}"), "f")));
    host.upload_and_promote("1", &raw_tar_gz(&entries));
    let out = host.drover(&["once"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = rejection_line(&text).unwrap_or_else(|| panic!("no artifact_rejected in\n{text}"));
    println!("{line}");
    assert!(line.contains("create hard link"), "{line}");
    assert!(line.contains("Too many links"), "{line}");
    assert_eq!(host.status()["last"]["result"], "rejected");
    // Remembered: the next pass does not download it again.
    let again = stderr(&host.drover(&["once"]));
    assert!(!again.contains("deploy_started"), "{again}");
    assert_eq!(
        host.release_dirs().1,
        Vec::<String>::new(),
        "staging emptied"
    );
}

/// The uid the app runs as in the race test: a number, so the host needs no user for it.
const APP_UID: u32 = 64123;

/// A release with many directories for the racer to swap in: `data/dI/dJ/` and `data/dI/fJ`.
fn tree_release() -> Vec<RawEntry> {
    let mut entries = vec![app()];
    for i in 0..30 {
        entries.push(RawEntry::dir(&format!("data/d{i}")));
        for j in 0..8 {
            entries.push(RawEntry::dir(&format!("data/d{i}/d{j}")));
            entries.push(RawEntry::file(&format!("data/d{i}/d{j}/f"), b"x"));
        }
        for j in 0..4 {
            entries.push(RawEntry::file(&format!("data/d{i}/f{j}"), b"x"));
        }
    }
    entries
}

/// Owner, group and mode of everything under `dir`, `dir` included.
fn owners(dir: &Path) -> BTreeMap<String, (u32, u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        out.insert(
            p.display().to_string(),
            (meta.uid(), meta.gid(), meta.mode()),
        );
        if meta.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .expect("list")
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Issue 13, finding 1: the app's user, hostile, swaps every entry of every directory it owns
/// with a symlink to a sentinel outside (and back) while drover gives new releases to it, and
/// takes old ones back to prune them, as plain root and with only the unit's capabilities.
/// Every sentinel must keep its owner and mode. `DROVER_RACE_SECONDS` makes it a soak
/// (`make race`); `make test` runs it for a few seconds.
#[test]
fn the_app_user_racing_the_tree_walks_reaches_nothing_outside() {
    let seconds: f64 = std::env::var("DROVER_RACE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    let world = World::new("race");
    let endpoint = world.moto.endpoint();
    let host = Host::with_config(world, &endpoint, "");
    let config = std::fs::read_to_string(&host.config).expect("config");
    let config = config.replace(
        "keep = 2",
        &format!("keep = 2\nowner = \"{APP_UID}:{APP_UID}\""),
    );
    std::fs::write(&host.config, config).expect("config");
    // The app's user can reach the release root, as it can reach /opt/app.
    let dir = host.world.dir();
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");

    // Sentinels: root's, outside the release root, named like the entries of the release so that
    // a walk that strays through a symlink finds something to act on.
    let sentinels = dir.join("sentinels");
    let sentinel_dir = sentinels.join("dir");
    let sentinel_file = sentinels.join("file");
    std::fs::create_dir_all(&sentinel_dir).expect("mkdir");
    std::fs::write(&sentinel_file, b"secret").expect("write");
    for j in 0..8 {
        std::fs::create_dir(sentinel_dir.join(format!("d{j}"))).expect("mkdir");
        std::fs::write(sentinel_dir.join(format!("d{j}/f")), b"secret").expect("write");
        std::fs::write(sentinel_dir.join(format!("f{j}")), b"secret").expect("write");
    }
    let chmod = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .expect("chmod")
    };
    for (p, _) in owners(&sentinel_dir) {
        let p = Path::new(&p);
        // Read-only even to root's own user bits: a stray `u+rwx` shows.
        chmod(p, if p.is_dir() { 0o500 } else { 0o400 });
    }
    chmod(&sentinel_file, 0o600);
    let before = owners(&sentinels);

    host.upload_and_promote("1", &raw_tar_gz(&tree_release()));
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let racer = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={APP_UID}"),
            &format!("--regid={APP_UID}"),
            "--clear-groups",
            env!("CARGO_BIN_EXE_racer"),
        ])
        .arg(host.root())
        .arg(&sentinel_file)
        .arg(&sentinel_dir)
        .arg(seconds.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the racer");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let mut version = 1;
    let mut failed = Vec::new();
    while std::time::Instant::now() < deadline {
        version += 1;
        host.upload_and_promote(&version.to_string(), &raw_tar_gz(&tree_release()));
        // Every other deploy as the unit runs drover: root with only CAP_CHOWN, CAP_SETUID and
        // CAP_SETGID, so that pruning must take the old release back from its owner.
        let mut cmd = host.command(&["once"]);
        if version % 2 == 0 {
            let mut capped = std::process::Command::new("setpriv");
            capped
                .args([
                    "--bounding-set=-all,+chown,+setuid,+setgid",
                    "--inh-caps=-all",
                ])
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))));
            cmd = capped;
        }
        let out = cmd.output().expect("run drover");
        if out.status.code() != Some(0) {
            failed.push(format!("deploy {version}: {}", stderr(&out)));
        }
    }
    let raced = racer.wait_with_output().expect("racer");
    let report = String::from_utf8_lossy(&raced.stdout).into_owned();
    let swaps: u64 = report
        .trim()
        .strip_prefix("swaps=")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    println!(
        "race: {version} deploys in {seconds} s, racer: {}",
        report.trim()
    );
    assert!(swaps > 0, "the racer never swapped anything: {report}");

    let after = owners(&sentinels);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, o)| before.get(*p) != Some(o))
        .collect();
    assert!(
        changed.is_empty(),
        "sentinels changed (owner, group, mode): {changed:?}"
    );
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(host.current(), format!("releases/{version}"));
    let staging = host.root().join(".staging");
    assert_eq!(
        std::fs::metadata(&staging).expect("staging").mode() & 0o7777,
        0o700
    );
    assert_eq!(
        host.release_dirs().1,
        Vec::<String>::new(),
        "staging emptied"
    );
}

/// The same corpus through `drover unpack`, each archive as `.tar.gz` and again as `.tar.zst`:
/// the same verdict, word for word, for every case whose gzip layer is whole (the rest are about
/// gzip itself; the zstd layer's own faults are the last cases here). Nothing is left behind.
#[test]
fn the_hostile_corpus_behind_zstd_gets_the_same_verdicts() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `name` is `gz/N` or `zs/N`: paths of one length, as some verdicts count bytes.
    let unpack = |name: &str, bytes: &[u8]| -> String {
        let archive = dir.path().join(name);
        std::fs::create_dir_all(archive.parent().expect("parent")).expect("mkdir");
        std::fs::write(&archive, bytes).expect("write");
        let dest = dir.path().join(format!("{name}.out"));
        let out = drover_tests::host::drover_command(
            Path::new("/nonexistent/drover.toml"),
            &[
                "unpack",
                "--max-unpacked-size",
                "16MiB",
                "--max-entries",
                "1000",
            ],
        )
        .arg(&archive)
        .arg(&dest)
        .output()
        .expect("run drover unpack");
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(!dest.exists(), "{name}: the destination was left behind");
        let text = stderr(&out);
        text.lines().last().unwrap_or_default().to_owned()
    };
    let mut compared = 0;
    for (i, case) in corpus().into_iter().enumerate() {
        let Some(zst) = drover_tests::release::zstd_of_gzip(&case.archive) else {
            eprintln!("{}: about the gzip layer, skipped", case.name);
            continue;
        };
        let (gz_says, zst_says) = (
            unpack(&format!("gz/{i}"), &case.archive),
            unpack(&format!("zs/{i}"), &zst),
        );
        assert_eq!(gz_says.replace("/gz/", "/zs/"), zst_says, "{}", case.name);
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} cases compared");

    // The zstd layer's own faults.
    let good = drover_tests::release::zstd_of_gzip(&raw_tar_gz(&[app()])).expect("zstd");
    let truncated = unpack("zs/truncated", &good[..good.len() - 6]);
    assert!(truncated.contains("archive is corrupt"), "{truncated}");
    let trailing = unpack("zs/trailing", &[&good[..], b"junk"].concat());
    assert!(trailing.contains("archive is corrupt"), "{trailing}");
    eprintln!("{compared} cases compared; truncated: {truncated}; trailing: {trailing}");
}
