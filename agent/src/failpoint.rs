//! Crash points for the kill -9 sweep (tests/crash.rs): named places in a deployment where a
//! debug build kills itself with SIGKILL when asked to, so that the recovery from every step is
//! tested on purpose rather than by luck. Release builds compile [`hit`] to nothing.
//!
//! `DROVER_CRASH_FILE=PATH` in the environment arms the points; the file's content names the one
//! to fire. The first time the agent reaches it, it deletes the file and kills itself, so the
//! restarted agent carries on past the point. No file, no crash.

/// Every crash point, in the order a deployment (then a revert) passes them.
pub const ALL: &[&str] = &[
    "after_download",
    "mid_unpack",
    "after_unpack",
    "after_install",
    "after_pending_saved",
    "after_switch",
    "after_restart",
    "mid_health",
    "before_commit",
    "after_commit",
    "after_failed_saved",
    "after_revert_switch",
];

/// Crash points of a change of the app's environment alone (`[environment]`).
pub const ENVIRONMENT: &[&str] = &["after_environment_written"];

/// Kills the process here if the crash file names `point`.
#[inline]
pub fn hit(point: &'static str) {
    #[cfg(debug_assertions)]
    {
        debug_assert!(
            ALL.contains(&point) || ENVIRONMENT.contains(&point),
            "unknown crash point {point}"
        );
        let Some(file) = std::env::var_os("DROVER_CRASH_FILE") else {
            return;
        };
        let file = std::path::Path::new(&file);
        match std::fs::read_to_string(file) {
            Ok(armed) if armed.trim() == point => {}
            _ => return,
        }
        if std::fs::remove_file(file).is_err()
            || crate::fsutil::sync_dir(crate::fsutil::parent(file)).is_err()
        {
            return;
        }
        eprintln!("drover: crash point {point}: SIGKILL");
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
