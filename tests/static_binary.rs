//! The shipped binary (`make static`): statically linked, so it runs where nothing else is, such
//! as an empty chroot, and small enough for every instance to download at boot.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

/// `DROVER_STATIC_BIN`, which the Makefile sets after `make static`.
fn static_bin() -> PathBuf {
    let path = std::env::var_os("DROVER_STATIC_BIN")
        .map(PathBuf::from)
        .expect("DROVER_STATIC_BIN is not set: run `make static` (make test does)");
    assert!(
        path.is_file(),
        "{} is missing: run `make static`",
        path.display()
    );
    path
}

/// The version in `agent/Cargo.toml`, which the binary reports.
fn agent_version() -> String {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/Cargo.toml"),
    )
    .unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version line in agent/Cargo.toml")
        .to_owned()
}

#[test]
fn runs_in_an_empty_chroot() {
    let bin = static_bin();
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&bin, root.path().join("drover")).unwrap();
    std::fs::write(
        root.path().join("config.toml"),
        "[artifact]\nbucket = \"b\"\n[release]\nroot = \"/app\"\n[agent]\nstate_dir = \"/state\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        drover_tests::output_of_fresh_binary(
            Command::new("chroot")
                .arg(root.path())
                .arg("/drover")
                .args(args),
        )
    };
    let version = run(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    let said = String::from_utf8_lossy(&version.stdout);
    assert!(
        said.starts_with(&format!("drover {} (commit ", agent_version())),
        "{said}"
    );
    // A command that reads the config and the disk: nothing but the binary is needed. With no
    // region and no network, what the parameter asks for is unknown, and said why.
    let status = run(&["--config", "/config.toml", "status", "--json"]);
    assert!(status.status.success(), "{status:?}");
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["current"], serde_json::Value::Null);
    assert_eq!(json["desired"], serde_json::Value::Null);
    assert!(json["desired_error"].is_string(), "{json}");
    let entries: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(entries.contains(&"drover".to_string()));
}

#[test]
fn is_statically_linked_and_stripped() {
    let bin = static_bin();
    let file = Command::new("file").arg(&bin).output().expect("file(1)");
    let text = String::from_utf8_lossy(&file.stdout);
    assert!(
        text.contains("static-pie linked") || text.contains("statically linked"),
        "{text}"
    );
    assert!(text.contains(", stripped"), "{text}");
}

/// A static PIE (ASLR kept) whose relative relocations are packed (`-z pack-relative-relocs`):
/// as 24-byte RELA entries they were 0.68 MB of the file, and of the idle daemon's RSS
/// (docs/PACKAGING.md).
#[test]
fn is_a_pie_with_packed_relocations() {
    let bin = static_bin();
    let out = Command::new("readelf")
        .args(["--file-header", "--dynamic", "--section-headers", "--wide"])
        .arg(&bin)
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("DYN (Position-Independent Executable file)"),
        "{text}"
    );
    assert!(text.contains("(RELR)"), "no DT_RELR: {text}");
    let rela_bytes = text
        .lines()
        .find(|l| l.contains("(RELASZ)"))
        .and_then(|l| l.split_whitespace().rev().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        rela_bytes < 4096,
        "{rela_bytes} bytes of RELA relocations left"
    );
}
