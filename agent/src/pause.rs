//! `drover pause` and `drover resume`: an operator's hold on this instance, in
//! `{state_dir}/pause.json` (root only, written atomically as `state.json` is). Polls go on while
//! it holds, and a switch left in flight is still undone, but a new desired version is not
//! deployed and no new environment is applied (`reconcile/pause.rs` acts on it). It needs no AWS
//! access: the daemon reads the file at its next pass. A pause with `until` lapses by itself.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, IoContext, PathError};

/// The longest reason kept: it goes into journal fields and status objects.
pub const MAX_REASON: usize = 500;

/// One pause, as the file holds it and `drover status --json` and the status objects show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// When it was asked for (RFC 3339, UTC).
    pub since: String,
    /// When it lapses by itself (RFC 3339, UTC); `None`: until `drover resume`.
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl Pause {
    /// Whether it still holds at `now`. An `until` that cannot be read holds: a pause errs on
    /// the side of not deploying, and `drover resume` ends it.
    pub fn in_force(&self, now: SystemTime) -> bool {
        match self.until.as_deref() {
            None => true,
            Some(until) => crate::rfc3339::parse(until).is_none_or(|until| now < until),
        }
    }

    /// The pause that holds when the file cannot be read (see [`PauseFile::in_force`]).
    fn unreadable(error: &PauseError) -> Pause {
        Pause {
            since: String::new(),
            until: None,
            reason: Some(format!("{error}; drover resume removes it")),
        }
    }

    /// `until 2026-12-01T10:00:00Z (reason)`, or what of it there is, for a line of text (not
    /// escaped: a status object's is the caller's to escape).
    pub fn describe(&self) -> String {
        let mut out = match &self.until {
            Some(until) => format!("until {until}"),
            None => "until drover resume".to_owned(),
        };
        if let Some(reason) = &self.reason {
            out += &format!(" ({reason})");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error(transparent)]
    Io(#[from] PathError),
    #[error("pause file {path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

pub struct PauseFile {
    path: PathBuf,
}

impl PauseFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("pause.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pause in the file, lapsed or not; `None` without a file.
    pub fn load(&self) -> Result<Option<Pause>, PauseError> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).at("read", &self.path).map_err(PauseError::from),
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| PauseError::Corrupt {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// The pause holding at `now`: a lapsed one is none, and a file that cannot be read is a
    /// pause (with a warning), since an operator meant to hold the instance.
    pub fn in_force(&self, now: SystemTime) -> Option<Pause> {
        match self.load() {
            Ok(pause) => pause.filter(|p| p.in_force(now)),
            Err(e) => {
                tracing::warn!(target: "drover", error = %e, "cannot read the pause; holding as paused");
                Some(Pause::unreadable(&e))
            }
        }
    }

    /// Writes `pause` in place of any other (0600, atomically).
    pub fn save(&self, pause: &Pause) -> Result<(), PathError> {
        ensure_dir(fsutil::parent(&self.path))?;
        let mut bytes = serde_json::to_vec_pretty(pause).unwrap_or_default();
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path, &bytes, 0o600)
    }

    /// Removes the pause; whether there was one.
    pub fn remove(&self) -> Result<bool, PathError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {
                fsutil::sync_dir(fsutil::parent(&self.path))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).at("remove", &self.path),
        }
    }
}

/// The state directory, root's alone, as the state lock makes it.
fn ensure_dir(dir: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .at("create directory", dir)
}

/// `--until`: an RFC 3339 time (`2026-12-01T18:00:00Z`) or a duration from `now` (`2h`,
/// `1h30m`); it must be in the future.
pub fn parse_until(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let until = match crate::rfc3339::parse(text.trim()) {
        Some(t) => t,
        None => {
            let after = crate::units::parse_duration(text).map_err(|_| {
                format!(
                    "--until {text:?} is neither an RFC 3339 time (2026-12-01T18:00:00Z) nor a \
                     duration (2h, 1h30m)"
                )
            })?;
            now.checked_add(after)
                .ok_or_else(|| format!("--until {text:?} is too far away"))?
        }
    };
    if until <= now {
        return Err(format!("--until {text:?} is not in the future"));
    }
    Ok(until)
}

/// `drover pause`: holds this instance from `now` until `until` (or `drover resume`). A pause
/// already in force keeps its `since`. Returns the line to print.
pub fn pause(
    file: &PauseFile,
    until: Option<&str>,
    reason: Option<&str>,
    now: SystemTime,
) -> Result<String, String> {
    let until = until.map(|u| parse_until(u, now)).transpose()?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.len() > MAX_REASON) {
        return Err(format!("--reason is longer than {MAX_REASON} bytes"));
    }
    let before = file.load().ok().flatten().filter(|p| p.in_force(now));
    let pause = Pause {
        since: (before.as_ref().map(|p| p.since.clone()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| crate::rfc3339::format(now)),
        until: until.map(crate::rfc3339::format),
        reason: reason.map(str::to_owned),
    };
    file.save(&pause).map_err(|e| e.to_string())?;
    let verb = if before.is_some() {
        "still paused"
    } else {
        "paused"
    };
    Ok(format!(
        "{verb} {}: no new version is deployed here; polls go on",
        pause.describe().escape_debug()
    ))
}

/// `drover pause [--until TIME] [--reason TEXT]` on this instance, now: the line to print.
pub fn here(
    config: &crate::config::Config,
    until: Option<String>,
    reason: Option<String>,
) -> Result<String, String> {
    let file = PauseFile::new(&config.agent.state_dir);
    let line = pause(
        &file,
        until.as_deref(),
        reason.as_deref(),
        SystemTime::now(),
    )?;
    Ok(line + "\n")
}

/// `drover resume` on this instance, now: the line to print.
pub fn resume_here(config: &crate::config::Config) -> Result<String, String> {
    let file = PauseFile::new(&config.agent.state_dir);
    Ok(resume(&file, SystemTime::now())? + "\n")
}

/// `drover resume`: ends the pause. Returns the line to print.
pub fn resume(file: &PauseFile, now: SystemTime) -> Result<String, String> {
    let before = file.load().ok().flatten();
    if !file.remove().map_err(|e| e.to_string())? {
        return Ok("not paused".to_owned());
    }
    Ok(match before {
        Some(p) if !p.in_force(now) => "the pause had lapsed already; removed it".to_owned(),
        _ => "resumed: the next pass deploys what the parameter asks for".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn a_pause_lapses_at_its_until_and_holds_without_one() {
        let now = at(1_800_000_000);
        let until = parse_until("2h", now).unwrap();
        assert_eq!(until, now + Duration::from_secs(7200));
        let pause = Pause {
            since: crate::rfc3339::format(now),
            until: Some(crate::rfc3339::format(until)),
            reason: None,
        };
        assert!(pause.in_force(now));
        assert!(pause.in_force(until - Duration::from_secs(1)));
        assert!(!pause.in_force(until));
        let forever = Pause {
            until: None,
            ..pause.clone()
        };
        assert!(forever.in_force(at(u32::MAX as u64)));
        let unreadable = Pause {
            until: Some("soon".into()),
            ..pause
        };
        assert!(unreadable.in_force(at(u32::MAX as u64)), "holds");
    }

    #[test]
    fn until_is_a_time_or_a_duration_in_the_future() {
        let now = crate::rfc3339::parse("2026-12-01T10:00:00Z").unwrap();
        assert_eq!(
            parse_until("2026-12-01T18:00:00Z", now),
            crate::rfc3339::parse("2026-12-01T18:00:00Z").ok_or(String::new())
        );
        assert_eq!(
            parse_until("1h30m", now),
            Ok(now + Duration::from_secs(5400))
        );
        for bad in ["2026-12-01T09:00:00Z", "0s", "tomorrow", ""] {
            assert!(parse_until(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn pause_and_resume_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = PauseFile::new(&dir.path().join("state"));
        let now = at(1_800_000_000);
        assert_eq!(file.in_force(now), None);
        let line = pause(&file, Some("1h"), Some("incident 42"), now).unwrap();
        assert!(line.starts_with("paused until "), "{line}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let held = file.in_force(now).unwrap();
        assert_eq!(held.reason.as_deref(), Some("incident 42"));
        // A second pause keeps when the first began.
        let later = now + Duration::from_secs(60);
        let line = pause(&file, None, None, later).unwrap();
        assert!(
            line.starts_with("still paused until drover resume"),
            "{line}"
        );
        let again = file.load().unwrap().unwrap();
        assert_eq!((again.since, again.until), (held.since, None));
        assert_eq!(
            resume(&file, later).unwrap(),
            "resumed: the next pass deploys what the parameter asks for"
        );
        assert_eq!(resume(&file, later).unwrap(), "not paused");
        assert!(pause(&file, None, Some(&"x".repeat(501)), now).is_err());
        assert!(pause(&file, Some("yesterday"), None, now).is_err());
        assert!(!file.path().exists(), "refused pauses write nothing");
        // Lapsed: not in force, and resume says so.
        pause(&file, Some("1s"), None, now).unwrap();
        assert_eq!(file.in_force(now + Duration::from_secs(1)), None);
        assert!(resume(&file, now + Duration::from_secs(2))
            .unwrap()
            .contains("lapsed"));
    }

    #[test]
    fn an_unreadable_pause_file_holds() {
        let dir = tempfile::tempdir().unwrap();
        let file = PauseFile::new(dir.path());
        std::fs::write(file.path(), b"{half").unwrap();
        let held = file.in_force(at(0)).unwrap();
        assert!(
            held.reason.as_deref().unwrap().contains("pause.json"),
            "{held:?}"
        );
        assert_eq!(
            resume(&file, at(0)).unwrap(),
            "resumed: the next pass deploys what the parameter asks for"
        );
    }
}
