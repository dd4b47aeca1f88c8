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
        drover_tests::output_of_fresh_binary(
            Command::new("chroot")
                .arg(root.path())
                .arg("/drover")
                .args(args),
        )
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

/// The arm64 `.deb` of `make dist` (`$DROVER_DEB_ARM64`) installed with `dpkg -i` in an arm64
/// Debian tree (tests/scripts/setup.sh debootstraps it), run under systemd-nspawn through
/// binfmt_misc: dpkg takes it as its own architecture, the unit is enabled, the binary runs, and
/// removal masks the unit. The amd64 package is refused there, which shows the tree is arm64.
#[test]
fn the_arm64_deb_installs_in_an_arm64_container() {
    if !binfmt("the_arm64_deb_installs_in_an_arm64_container") {
        return;
    }
    let rootfs = arm64_tree();
    let deb = |var: &str| -> PathBuf {
        let path = PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
            panic!("{var} is not set: `make test` sets it, after `make dist` builds the package")
        }));
        assert!(
            path.is_file(),
            "{var}={}: no such file; run `make dist`",
            path.display()
        );
        path
    };
    let (arm64, amd64) = (deb("DROVER_DEB_ARM64"), deb("DROVER_DEB"));
    let debs = tempfile::tempdir().unwrap();
    for path in [&arm64, &amd64] {
        std::fs::copy(path, debs.path().join(path.file_name().unwrap())).unwrap();
    }
    let name = |path: &Path| path.file_name().unwrap().to_string_lossy().into_owned();
    let script = format!(
        "set -e
         echo arch=$(dpkg --print-architecture) machine=$(uname -m)
         dpkg -i /mnt/deb/{arm64} >/dev/null
         dpkg-query -W -f='package=${{Package}} ${{Version}} ${{Architecture}}\\n' drover
         echo version=$(drover --version)
         echo enabled=$(systemctl is-enabled drover)
         if dpkg -i /mnt/deb/{amd64} 2>/tmp/refused; then echo amd64=installed; else echo amd64=refused; cat /tmp/refused; fi
         dpkg -r drover >/dev/null
         echo removed=$(systemctl is-enabled drover || true)",
        arm64 = name(&arm64),
        amd64 = name(&amd64),
    );
    let (status, text, err) = in_tree(&rootfs, debs.path(), "/mnt/deb", &script);
    assert!(status.success(), "{text}\n{err}");
    let version = crate::packages::cargo_version();
    for line in [
        "arch=arm64 machine=aarch64".to_string(),
        format!("package=drover {version} arm64"),
        format!("version=drover {version}"),
        "enabled=enabled".to_string(),
        "amd64=refused".to_string(),
        "package architecture (amd64) does not match system (arm64)".to_string(),
        "removed=masked".to_string(),
    ] {
        assert!(text.contains(&line), "no {line:?} in:\n{text}\n{err}");
    }
}

/// The arm64 Debian tree tests/scripts/setup.sh makes where binfmt_misc runs aarch64 binaries.
fn arm64_tree() -> PathBuf {
    let rootfs = drover_tests::cache_dir().join("rootfs-arm64");
    assert!(
        rootfs.join(".drover-test-recipe").is_file(),
        "{} is missing: run `sudo tests/scripts/setup.sh` (or `make test-setup`)",
        rootfs.display()
    );
    rootfs
}

/// Runs `sh -c SCRIPT` in ROOTFS under systemd-nspawn (not booted), with DIR bound read-only at
/// INSIDE: its exit status, standard output and error (`--pipe`: no terminal, so no "\r\n").
/// `--volatile=overlay`: what the script
/// writes goes to a tmpfs, and the cached tree stays as it was made.
fn in_tree(
    rootfs: &Path,
    dir: &Path,
    inside: &str,
    script: &str,
) -> (std::process::ExitStatus, String, String) {
    let out = run(Command::new("systemd-nspawn")
        .args([
            "--quiet",
            "--pipe",
            "--register=no",
            "--keep-unit",
            "--volatile=overlay",
        ])
        .arg(format!("--directory={}", rootfs.display()))
        .arg(format!("--bind-ro={}:{inside}", dir.display()))
        .args(["sh", "-c", script]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status, text, err)
}

/// The install script of the example CloudFormation template, as cloud-init would write it (its
/// `${!name}` are Fn::Sub's escapes for a literal `${name}`).
fn cloudformation_install_script() -> String {
    let path = drover_tests::workspace_dir().join("packaging/cloudformation/drover-example.yaml");
    let template = std::fs::read_to_string(&path).unwrap();
    let start = template
        .find("- path: /usr/local/lib/drover/install-drover")
        .expect("the template writes install-drover");
    let body = &template[start..];
    let body = &body[body.find("content: |").expect("its content") + "content: |".len()..];
    let end = body.find("runcmd:").expect("runcmd after it");
    let indent = "                  ";
    body[..end]
        .lines()
        .skip(1)
        .map(|line| line.strip_prefix(indent).unwrap_or(line.trim()))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("${!", "${")
}

/// The example CloudFormation template's install script on an x86_64 and an arm64 tree, given
/// both architectures' binaries as its runcmd gives them: each installs its own, and an arm64
/// instance with no Graviton binary pinned (the parameters' default) installs nothing.
#[test]
fn the_cloudformation_install_script_picks_the_binary_of_the_machine() {
    if !binfmt("the_cloudformation_install_script_picks_the_binary_of_the_machine") {
        return;
    }
    let x86 = std::env::var_os("DROVER_STATIC_BIN")
        .map(PathBuf::from)
        .expect("DROVER_STATIC_BIN is not set: run `make static` (make test does)");
    let arm = aarch64_bin();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&x86, dir.path().join("drover-x86_64")).unwrap();
    std::fs::copy(&arm, dir.path().join("drover-aarch64")).unwrap();
    std::fs::write(
        dir.path().join("install-drover"),
        cloudformation_install_script(),
    )
    .unwrap();
    let (x86_sum, arm_sum) = (
        drover_tests::sha256_file(&x86),
        drover_tests::sha256_file(&arm),
    );
    let install = |aarch64: &str| {
        format!(
            "sh /mnt/cfn/install-drover x86_64 /mnt/cfn/drover-x86_64 {x86_sum} \
             aarch64 {aarch64} 2>&1 || echo exit=$?
             /usr/local/bin/drover --version 2>&1 || true"
        )
    };
    let pinned = format!("/mnt/cfn/drover-aarch64 {arm_sum}");
    let cases = [
        (drover_tests::require_setup(), x86_sum.as_str()),
        (arm64_tree(), arm_sum.as_str()),
    ];
    for (tree, digest) in &cases {
        let (_, text, err) = in_tree(tree, dir.path(), "/mnt/cfn", &install(&pinned));
        // It installs, then cannot reach a systemd that is not running in an unbooted tree.
        assert!(
            text.contains(&format!(
                "installed /usr/local/bin/drover (sha256 {digest})"
            )),
            "{}: {text}\n{err}",
            tree.display()
        );
        assert!(text.contains("drover 0."), "{text}");
    }
    let (_, text, err) = in_tree(&arm64_tree(), dir.path(), "/mnt/cfn", &install("'' ''"));
    assert!(
        text.contains(
            "no drover binary is pinned for this machine's architecture (aarch64)\nexit=1"
        ),
        "{text}\n{err}"
    );
    assert!(text.contains("/usr/local/bin/drover: not found"), "{text}"); // nothing installed
}
