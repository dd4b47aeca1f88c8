//! A full disk, for real: the release root is a 4 MiB tmpfs, and the real `drover once` (AWS SDK
//! against moto) fetches artifacts that do not fit: one whose download is larger than the free
//! space, refused by the space check before a byte is fetched, and one that only fills the disk
//! while unpacking (ENOSPC); then the same on an instance, where the app must keep serving. Each
//! time the staging is cleaned up, the old release stays active and complete, the event names
//! the path and what was short, and the request is retried (not remembered as failed), so that
//! the same version deploys once there is space.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::Duration;

use drover_tests::host::{stderr, Host};
use drover_tests::release::{noise, raw_tar_gz, RawEntry, APP_PY};
use drover_tests::World;
use drover_tests::{wait_for, Bind};

/// A tmpfs mounted for the test's lifetime.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).expect("mount point");
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mount tmpfs at {}", at.display());
        SmallFs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "resize tmpfs at {}", self.0.display());
    }

    fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=used", "-B1"])
            .arg(&self.0)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn release(version: &str, payload: Vec<u8>) -> Vec<u8> {
    raw_tar_gz(&[
        RawEntry::file("VERSION", format!("{version}\n").as_bytes()),
        RawEntry::file("payload", &payload),
    ])
}

#[test]
fn full_disk_while_downloading_or_unpacking_keeps_the_old_release() {
    let world = World::new("fulldisk");
    let endpoint = world.moto.endpoint();
    let host = Host::with_config(world, &endpoint, "");
    let disk = SmallFs::mount(&host.root(), "4m");

    host.upload_and_promote("1.0.0", &release("1.0.0", noise(256 << 10)));
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let baseline = disk.used();

    let root = host.root().display().to_string();
    let cases = [
        // 6 MiB of noise: the download itself does not fit, which the space check sees first.
        (
            "2.0.0",
            release("2.0.0", noise(6 << 20)),
            [
                root.as_str(),
                "bytes needed for releases/2.0.0.tar.gz",
                "free",
            ],
        ),
        // 8 MiB of zeros: an 8 kB download that does not fit once unpacked (nothing announced
        // its unpacked size).
        (
            "3.0.0",
            release("3.0.0", vec![0; 8 << 20]),
            ["No space left on device", "entry \"payload\"", "write"],
        ),
    ];
    for (version, archive, says) in &cases {
        host.upload_and_promote(version, archive);
        let started = std::time::Instant::now();
        let out = host.drover(&["once"]);
        let took = started.elapsed();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{version}: {text}");
        let line = text
            .lines()
            .find(|l| l.contains("event=\"poll_failed\""))
            .unwrap_or_else(|| panic!("{version}: no poll_failed event in\n{text}"));
        for part in says {
            assert!(line.contains(part), "{part:?} not in {line}");
        }
        eprintln!("{version}: failed after {took:?}");
        assert!(line.contains(&format!("version=\"{version}\"")), "{line}");
        assert!(!text.contains("artifact_rejected"), "{text}");
        assert_eq!(host.current(), "releases/1.0.0");
        assert_eq!(host.release_dirs(), (vec!["1.0.0".into()], vec![]));
        let served = std::fs::read_to_string(host.root().join("current/VERSION")).expect("VERSION");
        assert_eq!(served, "1.0.0\n");
        assert_eq!(disk.used(), baseline, "{version}: space was not given back");
        assert_eq!(host.status()["good"], "1.0.0");
        assert!(
            host.status()["failed"]
                .as_array()
                .is_some_and(|f| f.is_empty()),
            "a full disk is not the artifact's fault"
        );
        eprintln!("{version}: {line}");
    }

    // Space freed (the filesystem grown): the parameter still says 3.0.0, and it deploys.
    disk.resize("16m");
    let out = host.drover(&["once"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(host.current(), "releases/3.0.0");
}

#[test]
fn full_disk_on_an_instance_keeps_the_app_serving() {
    let world = World::new("fulldisk_instance");
    let disk = SmallFs::mount(&world.dir().join("opt-app"), "4m");
    let mut spec = world.boot_spec();
    spec.binds.push(Bind {
        host: disk.0.clone(),
        inside: "/opt/app".into(),
        read_only: false,
    });
    let instance = world.boot(spec);
    world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, Duration::from_secs(60));

    // 2.0.0 carries 6 MiB that does not compress: it cannot even be downloaded.
    let big = raw_tar_gz(&[
        RawEntry::file("app.py", APP_PY.as_bytes()),
        RawEntry::file("VERSION", b"2.0.0\n"),
        RawEntry::file("data.bin", &noise(6 << 20)),
    ]);
    let tarball = world.artifacts_dir().join("2.0.0.tar.gz");
    std::fs::write(&tarball, &big).unwrap();
    world.publish("2.0.0", &tarball);
    world.promote("2.0.0");
    let failed = wait_for(
        Duration::from_secs(60),
        "the lack of space to be reported",
        || {
            instance
                .journal_events("poll_failed")
                .into_iter()
                .find(|e| e["VERSION"] == "2.0.0")
        },
    );
    // `drover publish` announced the unpacked size: download and unpack are counted up front.
    let error = failed["ERROR"].as_str().unwrap_or("");
    assert!(
        error.contains("/opt/app: ") && error.contains("bytes needed for releases/2.0.0.tar.gz"),
        "{error}"
    );
    assert_eq!(failed["PRIORITY"], "3");
    for _ in 0..3 {
        assert_eq!(instance.version_served().as_deref(), Some("1.0.0"));
        std::thread::sleep(Duration::from_millis(500));
    }
    instance.assert_staging_empty();
    assert!(instance.journal_events("artifact_rejected").is_empty());

    // Room made (the volume grown): the same request deploys on a later pass.
    disk.resize("16m");
    let deployed = instance.wait_for_events("deployed", 2, Duration::from_secs(60));
    assert_eq!(deployed[1]["VERSION"], "2.0.0");
    assert_eq!(instance.served(), "2.0.0");
    drop(instance); // halted before the tmpfs under it is unmounted
}

/// An artifact over `max_size` is the artifact's fault whatever the disk holds: rejected (and
/// remembered), not retried as a full disk would be, even where it would not fit either.
#[test]
fn an_artifact_over_max_size_is_rejected_before_the_space_check() {
    let world = World::new("toolarge");
    let endpoint = world.moto.endpoint();
    let host = Host::with_artifact_keys(world, &endpoint, "max_size = \"1MiB\"", "");
    let _disk = SmallFs::mount(&host.root(), "4m");
    host.upload_and_promote("1.0.0", &release("1.0.0", noise(6 << 20)));
    let out = host.drover(&["once"]);
    let text = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.contains("event=\"artifact_rejected\""))
        .unwrap_or_else(|| panic!("no artifact_rejected event in\n{text}"));
    assert!(
        line.contains("releases/1.0.0.tar.gz is larger than the limit of 1048576 bytes"),
        "{line}"
    );
    assert!(!text.contains("bytes needed"), "{text}");
    assert_eq!(host.status()["last"]["result"], "rejected");
}
