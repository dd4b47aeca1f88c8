//! drover's integration-test harness: real parts, started for each test. moto plays AWS on
//! loopback, a Debian container booted with systemd-nspawn plays the EC2 instance (systemd as
//! PID 1, journald, cloud-init), and the sample app is what gets deployed.
//!
//! A test makes a [`World`] (its own bucket, parameter, port and temp dir), publishes releases
//! with the operator commands, and boots an [`Instance`] that installs drover from user-data.
//! The machine must have been prepared with `tests/scripts/setup.sh`, and tests run as root.
//! The tests are one binary (`tests/integration.rs`), so they share one moto and run side by
//! side; one that cannot share the machine takes it first with [`alone`].

pub mod autoscaling;
pub mod container;
pub mod elb;
pub mod faultproxy;
pub mod host;
pub mod http;
pub mod https;
pub mod imds;
pub mod moto;
pub mod regions;
pub mod release;
pub mod transcript;
pub mod turns;
pub mod userdata;
pub mod webhook;
pub mod world;

pub use container::{Bind, Container, Overlay, Readiness};
pub use moto::Moto;
pub use turns::alone;
pub use world::{Boot, Instance, World};

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where `setup.sh` keeps the venv and the root filesystem: `$DROVER_TEST_CACHE`, by default
/// `/var/cache/drover-test`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DROVER_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/drover-test"))
}

/// The cached root filesystem the containers boot from. Panics, saying how to make it, when the
/// set-up has not been run or the tests do not run as root: such a test must fail, not pass.
pub fn require_setup() -> PathBuf {
    let rootfs = cache_dir().join("rootfs");
    let venv = cache_dir().join("venv/bin/moto_server");
    assert!(
        rootfs.join(".drover-test-recipe").is_file() && venv.is_file(),
        "the integration tests need {} and {}: run `sudo tests/scripts/setup.sh` (or `make test-setup`) first",
        rootfs.display(),
        venv.display(),
    );
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    assert_eq!(
        uid, 0,
        "the integration tests boot containers with systemd-nspawn and must run as root"
    );
    rootfs
}

/// The repository's root directory (the cargo workspace).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The drover binary under test: `$DROVER_BIN`, else `target/debug/drover` of this workspace
/// (`make build` makes it; `cargo test` alone does not build another package's binary).
pub fn drover_bin() -> PathBuf {
    let path = std::env::var_os("DROVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_dir().join("target"));
            target.join("debug/drover")
        });
    assert!(
        path.is_file(),
        "no drover binary at {}: run `make build` or set DROVER_BIN",
        path.display()
    );
    path
}

/// Lowercase hex SHA-256 of a file, by `sha256sum`: the debug binary is hundreds of megabytes,
/// and `sha2` built without optimisation (as test dependencies are) takes many seconds on it.
/// Remembered per path, size and modification time, since every boot pins the same binary.
pub fn sha256_file(path: &Path) -> String {
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static KNOWN: Mutex<Vec<(Key, String)>> = Mutex::new(Vec::new());
    let meta =
        std::fs::metadata(path).unwrap_or_else(|e| panic!("cannot hash {}: {e}", path.display()));
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, digest)) = known.iter().find(|(k, _)| *k == key) {
        return digest.clone();
    }
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sha256sum on {}: {e}", path.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    let digest = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        out.status.success() && digest.len() == 64,
        "sha256sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    known.push((key, digest.clone()));
    digest
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names in `dir`, sorted; none when it cannot be read.
pub fn sorted_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Polls `check` every 100 ms until it returns `Some`, and returns that value; panics naming
/// `what` once `timeout` has passed.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `check` every 100 ms until it is true; panics naming `what` once `timeout` has passed.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    wait_for(timeout, what, || check().then_some(()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before (containers share the host's network, so two tests must never get the same one).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A name unique in this process, built from `label` and usable as an S3 bucket name, SSM path
/// segment and machine name: lowercase letters, digits and dashes, at most 40 characters.
pub fn unique_name(label: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut clean: String = label
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    clean.truncate(30);
    let clean = clean.trim_matches('-');
    format!("{}-{n}", if clean.is_empty() { "t" } else { clean })
}

/// `cmd`'s output, run again (up to 50 times, 20 ms apart) while it fails with "Text file busy".
/// For a binary this test process has just copied: a child that another test thread forks while
/// the copy's file is open holds that descriptor until its own exec, and the kernel refuses to
/// run a file open for writing (ETXTBSY), whether `cmd` execs it or a `chroot` in between does.
pub fn output_of_fresh_binary(cmd: &mut std::process::Command) -> std::process::Output {
    for _ in 0..50 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(26) => {}
            Err(e) => panic!("cannot run {cmd:?}: {e}"),
            Ok(out) if String::from_utf8_lossy(&out.stderr).contains("Text file busy") => {}
            Ok(out) => return out,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{cmd:?}: still \"Text file busy\" after 50 tries")
}
