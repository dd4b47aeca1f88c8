//! Graviton (issue 17): the aarch64 static binary (`make static ARCH=aarch64`), run on this
//! x86_64 machine by qemu-user: as it is built, in an empty chroot, unpacking the hostile corpus
//! with the same verdicts as x86_64's, and as the agent of an instance (real systemd, journald and
//! the sample app) through deploy, upgrade and revert. What needs binfmt_misc (the chroot, the
//! instance) says so and skips where the kernel does not let it be registered; the corpus goes
//! through `qemu-aarch64-static` directly and never skips.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use drover_tests::World;

/// `DROVER_STATIC_BIN_AARCH64`, which the Makefile sets (`make dist` builds it).
fn aarch64_bin() -> PathBuf {
    let path = std::env::var_os("DROVER_STATIC_BIN_AARCH64")
        .map(PathBuf::from)
        .expect(
            "DROVER_STATIC_BIN_AARCH64 is not set: run `make static ARCH=aarch64` (make test does)",
        );
    assert!(
        path.is_file(),
        "{} is missing: run `make static ARCH=aarch64`",
        path.display()
    );
    path
}

/// Whether the kernel runs aarch64 binaries by itself (qemu-aarch64 registered with
/// binfmt_misc, tests/scripts/setup.sh); prints why not when it does not.
fn binfmt(test: &str) -> bool {
    let entry = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    let enabled = std::fs::read_to_string(entry).is_ok_and(|t| t.starts_with("enabled"));
    if !enabled {
        eprintln!(
            "SKIPPED {test}: no enabled {} (binfmt_misc not mounted, or qemu-aarch64 not \
             registered: tests/scripts/setup.sh tries both)",
            entry.display()
        );
    }
    enabled
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

#[test]
fn the_aarch64_binary_is_a_static_pie_with_packed_relocations() {
    let out = run(Command::new("readelf")
        .args(["--file-header", "--dynamic", "--wide"])
        .arg(aarch64_bin()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("AArch64"), "{text}");
    // ASLR kept: a static PIE, as on x86_64 (packaging/cross/aarch64-static-pie-cc).
    assert!(
        text.contains("DYN (Position-Independent Executable file)"),
        "{text}"
    );
    assert!(text.contains("(RELR)"), "{text}");
    assert!(
        !text.contains("(NEEDED)"),
        "it needs a shared library: {text}"
    );
    let size = std::fs::metadata(aarch64_bin()).unwrap().len();
    assert!(size <= 10_000_000, "{size} bytes");
    eprintln!("aarch64 static binary: {size} bytes");
}

#[test]
fn the_aarch64_binary_runs_in_an_empty_chroot() {
    if !binfmt("the_aarch64_binary_runs_in_an_empty_chroot") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(aarch64_bin(), root.path().join("drover")).unwrap();
    std::fs::write(
        root.path().join("config.toml"),
        "[artifact]\nbucket = \"b\"\n[release]\nroot = \"/app\"\n[agent]\nstate_dir = \"/state\"\n",
    )
    .unwrap();
    let chrooted = |args: &[&str]| {
        run(Command::new("chroot")
            .arg(root.path())
            .arg("/drover")
            .args(args))
    };
    let version = chrooted(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).starts_with("drover "),
        "{version:?}"
    );
    let status = chrooted(&["--config", "/config.toml", "status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["current"], serde_json::Value::Null);
}

/// Each archive of the hostile corpus through `drover unpack`, x86_64's binary and aarch64's
/// (by `qemu-aarch64-static`): the same exit status and the same words.
#[test]
fn the_hostile_corpus_gets_the_same_verdicts_on_aarch64() {
    let x86 = std::env::var_os("DROVER_STATIC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(drover_tests::drover_bin);
    let dir = tempfile::tempdir().unwrap();
    // `arch` names the destination's directory too: x86 or arm, of one length, as some verdicts
    // count the bytes of the path.
    let verdict = |arch: &str, i: usize, archive: &Path| -> (Option<i32>, String) {
        let dest = dir.path().join(format!("{arch}/{i}"));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut cmd = match arch {
            "x86" => Command::new(&x86),
            _ => {
                let mut c = Command::new("qemu-aarch64-static");
                c.arg(aarch64_bin());
                c
            }
        };
        let out = run(cmd
            .args(["--config", "/nonexistent/drover.toml", "unpack"])
            .args(["--max-unpacked-size", "16MiB", "--max-entries", "1000"])
            .arg(archive)
            .arg(&dest));
        assert!(
            !dest.exists() || out.status.success(),
            "{arch} {i}: left behind"
        );
        let said = String::from_utf8_lossy(&out.stderr).replace(&format!("/{arch}/"), "/ARCH/");
        (out.status.code(), said)
    };
    let mut compared = 0;
    for (i, case) in crate::adversarial::corpus().into_iter().enumerate() {
        let archive = dir.path().join(format!("{i}.tar.gz"));
        std::fs::write(&archive, &case.archive).unwrap();
        let (x, a) = (verdict("x86", i, &archive), verdict("arm", i, &archive));
        assert_eq!(x, a, "{}", case.name);
        assert_eq!(x.0, Some(1), "{}: not refused", case.name);
        compared += 1;
    }
    eprintln!("{compared} hostile archives: the same verdicts on x86_64 and aarch64");
}

/// The aarch64 agent on an instance: deploy, upgrade, revert, with real systemd and the app.
#[test]
fn an_instance_runs_the_aarch64_agent_through_deploy_upgrade_and_revert() {
    if !binfmt("an_instance_runs_the_aarch64_agent_through_deploy_upgrade_and_revert") {
        return;
    }
    const DEPLOY: Duration = Duration::from_secs(120);
    let world = World::new("graviton");
    let mut spec = world.boot_spec();
    spec.binary = aarch64_bin();
    spec.pinned_sha256 = drover_tests::sha256_file(&spec.binary);
    // qemu-user translates the aarch64 code into x86_64 code at run time, in memory that is
    // written and then executed, which the unit's MemoryDenyWriteExecute=yes forbids. On
    // Graviton there is no emulator and the unit runs as shipped; here this one line is relaxed.
    spec.extra_files.push(drover_tests::userdata::WriteFile {
        path: "/etc/systemd/system/drover.service.d/emulated.conf".into(),
        mode: 0o644,
        content: "[Service]\nMemoryDenyWriteExecute=no\n".into(),
    });
    let instance = world.boot(spec);
    let installed = instance.path("/usr/local/bin/drover");
    let machine = run(Command::new("file").arg("-b").arg(&installed));
    assert!(
        String::from_utf8_lossy(&machine.stdout).contains("ARM aarch64"),
        "{machine:?}"
    );

    world.release("1.0.0", true);
    let deployed = instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(deployed[0]["VERSION"], "1.0.0");
    assert_eq!(instance.served(), "1.0.0");

    world.release("2.0.0", true);
    let deployed = instance.wait_for_events("deployed", 2, DEPLOY);
    assert_eq!(deployed[1]["VERSION"], "2.0.0");
    assert_eq!(instance.served(), "2.0.0");

    world.release("3.0.0", false);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(reverted[0]["VERSION"], "3.0.0");
    assert_eq!(instance.served(), "2.0.0");
    let status = instance.status_json();
    assert_eq!(status["current"], "2.0.0");
}
