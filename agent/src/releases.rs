//! The release root on disk:
//!
//! ```text
//! {root}/releases/{version}/   complete releases, each renamed into place whole
//! {root}/current -> releases/{version}
//! {root}/.staging/             unpacks in progress; emptied on every cycle
//! {root}/.downloads/           the one download that may be resumed: {version}.part, and
//!                              {version}.part.json, the parts it has
//! ```
//!
//! Every change is staged and renamed into place, so `current` always names a complete release.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::fsutil::{self, IoContext, PathError};
use crate::tree;
use crate::version::Version;

const RELEASES: &str = "releases";
const CURRENT: &str = "current";
const STAGING: &str = ".staging";
const DOWNLOADS: &str = ".downloads";

/// Where an artifact is downloaded to, and the record of the parts it has: kept across passes
/// (and a kill -9), so a download cut short resumes where it stopped.
#[derive(Clone, Debug)]
pub struct Partial {
    pub data: PathBuf,
    pub record: PathBuf,
}

#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join(RELEASES)
    }

    pub fn release_dir(&self, version: &str) -> PathBuf {
        self.releases_dir().join(version)
    }

    pub fn current_link(&self) -> PathBuf {
        self.root.join(CURRENT)
    }

    pub fn staging_dir(&self) -> PathBuf {
        self.root.join(STAGING)
    }

    pub fn downloads_dir(&self) -> PathBuf {
        self.root.join(DOWNLOADS)
    }

    /// The resumable download of `version`.
    pub fn partial(&self, version: &Version) -> Partial {
        let dir = self.downloads_dir();
        Partial {
            data: dir.join(format!("{version}.part")),
            record: dir.join(format!("{version}.part.json")),
        }
    }

    /// Removes every partial download but `version`'s: one artifact's worth of space at most.
    pub fn forget_partials_but(&self, version: &Version) -> Result<(), PathError> {
        let dir = self.downloads_dir();
        let keep = self.partial(version);
        for entry in fs::read_dir(&dir).at("list", &dir)? {
            let path = entry.at("list", &dir)?.path();
            if path != keep.data && path != keep.record {
                tree::remove_tree(&path)?;
            }
        }
        Ok(())
    }

    /// Creates the directories if needed. The staging area and the downloads live under the
    /// root so that their renames into `releases/` never cross a filesystem, and are `0700`:
    /// nobody else may enter a release before it is renamed into place, nor one being pruned
    /// after it is moved out, nor touch an artifact between its download and its unpack.
    pub fn ensure(&self) -> Result<(), PathError> {
        let releases = self.releases_dir();
        fs::create_dir_all(&releases).at("create directory", &releases)?;
        private_dir(&self.staging_dir())?;
        private_dir(&self.downloads_dir())
    }

    /// The version `current` points at, or `None` if there is no link (a fresh instance).
    pub fn active(&self) -> Result<Option<String>, PathError> {
        let link = self.current_link();
        let target = match fs::read_link(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            other => other.at("read link", &link)?,
        };
        let version = target
            .strip_prefix(RELEASES)
            .ok()
            .and_then(|v| v.to_str())
            .filter(|v| Version::parse(v).is_ok());
        match version {
            Some(v) => Ok(Some(v.to_owned())),
            None => Err(std::io::Error::other(format!(
                "points at {}, not at releases/<version>",
                target.display()
            )))
            .at("read link", &link),
        }
    }

    pub fn has_release(&self, version: &str) -> bool {
        fs::symlink_metadata(self.release_dir(version)).is_ok_and(|m| m.is_dir())
    }

    /// A fresh, empty directory in the staging area for one download or unpack.
    pub fn new_staging(&self, purpose: &str, version: &Version) -> Result<PathBuf, PathError> {
        let dir = self
            .staging_dir()
            .join(fresh_name(purpose, version.as_str()));
        tree::remove_tree(&dir)?;
        self.ensure()?;
        fs::create_dir(&dir).at("create directory", &dir)?;
        Ok(dir)
    }

    /// Removes whatever an interrupted earlier run left in the staging area, and a stray
    /// temporary `current` link. Returns what was removed, and what could not be: a leftover
    /// that resists removal costs space, never a deploy (new staging directories get fresh
    /// names).
    pub fn clean_staging(&self) -> Result<(Vec<PathBuf>, Vec<PathError>), PathError> {
        let staging = self.staging_dir();
        let (mut removed, mut left) = (Vec::new(), Vec::new());
        let entries = match fs::read_dir(&staging) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((removed, left)),
            other => other.at("list", &staging)?,
        };
        for entry in entries {
            let path = entry.at("list", &staging)?.path();
            match tree::remove_tree(&path) {
                Ok(()) => removed.push(path),
                Err(e) => left.push(e),
            }
        }
        let tmp_link = self.tmp_link();
        if fs::symlink_metadata(&tmp_link).is_ok() {
            fs::remove_file(&tmp_link).at("remove", &tmp_link)?;
            removed.push(tmp_link);
        }
        Ok((removed, left))
    }

    /// Moves a complete, synced release directory from staging into `releases/{version}`.
    pub fn install(&self, staged: &Path, version: &Version) -> Result<PathBuf, PathError> {
        let dest = self.release_dir(version.as_str());
        if fs::symlink_metadata(&dest).is_ok() {
            // A leftover of the same version that is not active (checked by the caller):
            // move it out of the way first so the rename below stays a plain rename.
            self.discard(version.as_str())?;
        }
        fs::rename(staged, &dest).at("rename into place", &dest)?;
        fsutil::sync_dir(&self.releases_dir())?;
        Ok(dest)
    }

    /// Points `current` at `releases/{version}`: a new link under a temporary name, `rename(2)`
    /// over the old one, then fsync of the directory. Readers see the old target or the new.
    pub fn switch(&self, version: &str) -> Result<(), PathError> {
        let dest = self.release_dir(version);
        if !self.has_release(version) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "release directory is missing",
            ))
            .at("switch to", &dest);
        }
        let tmp = self.tmp_link();
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new(RELEASES).join(version), &tmp)
            .at("create link", &tmp)?;
        fs::rename(&tmp, self.current_link()).at("rename into place", &self.current_link())?;
        fsutil::sync_dir(&self.root)?;
        // Recency for pruning: the release most recently made active is the newest.
        let _ = fs::File::open(&dest).and_then(|d| d.set_modified(SystemTime::now()));
        Ok(())
    }

    /// Every release directory with the time it was last made active (its mtime).
    pub fn list(&self) -> Result<Vec<(String, SystemTime)>, PathError> {
        let dir = self.releases_dir();
        let entries = match fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.at("list", &dir)?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.at("list", &dir)?;
            let meta = entry.metadata().at("stat", &entry.path())?;
            if let (true, Some(name)) = (meta.is_dir(), entry.file_name().to_str()) {
                out.push((
                    name.to_owned(),
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                ));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Deletes a release: first renamed into staging (one atomic step out of `releases/`), then
    /// removed, so a crash midway never leaves a half-deleted release behind.
    pub fn discard(&self, version: &str) -> Result<(), PathError> {
        let src = self.release_dir(version);
        let trash = self.staging_dir().join(fresh_name("discard", version));
        tree::remove_tree(&trash)?;
        self.ensure()?;
        fs::rename(&src, &trash).at("move out of releases", &src)?;
        fsutil::sync_dir(&self.releases_dir())?;
        tree::remove_tree(&trash)
    }

    fn tmp_link(&self) -> PathBuf {
        self.root.join(".current.tmp")
    }
}

/// Makes `dir` (mode `0700`) if it is not there, and tightens one made before this rule, or by
/// hand.
fn private_dir(dir: &Path) -> Result<(), PathError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other.at("create directory", dir)?,
    }
    let meta = fs::symlink_metadata(dir).at("stat", dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other("not a directory")).at("check", dir);
    }
    if meta.permissions().mode() & 0o7777 != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).at("chmod", dir)?;
    }
    Ok(())
}

/// A staging name no earlier pass of this process, nor a leftover, has: `{purpose}-{version}-`
/// then the process id and a count.
fn fresh_name(purpose: &str, version: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{purpose}-{version}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, Layout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        layout.ensure().unwrap();
        (dir, layout)
    }

    fn stage(layout: &Layout, v: &str) {
        let version = Version::parse(v).unwrap();
        let staged = layout.new_staging("unpack", &version).unwrap();
        fs::write(staged.join("VERSION"), v).unwrap();
        layout.install(&staged, &version).unwrap();
    }

    #[test]
    fn switch_points_current_at_a_relative_target() {
        let (_d, layout) = layout();
        assert_eq!(layout.active().unwrap(), None);
        stage(&layout, "1.0");
        stage(&layout, "2.0");
        layout.switch("1.0").unwrap();
        layout.switch("2.0").unwrap();
        assert_eq!(
            fs::read_link(layout.current_link()).unwrap(),
            Path::new("releases/2.0")
        );
        assert_eq!(layout.active().unwrap().as_deref(), Some("2.0"));
        assert_eq!(
            fs::read_to_string(layout.current_link().join("VERSION")).unwrap(),
            "2.0"
        );
    }

    #[test]
    fn switch_to_a_missing_release_changes_nothing() {
        let (_d, layout) = layout();
        stage(&layout, "1.0");
        layout.switch("1.0").unwrap();
        let err = layout.switch("9.9").unwrap_err();
        assert!(err.to_string().contains("releases/9.9"), "{err}");
        assert_eq!(layout.active().unwrap().as_deref(), Some("1.0"));
    }

    #[test]
    fn clean_staging_removes_leftovers_and_stray_link() {
        let (_d, layout) = layout();
        let v = Version::parse("1.0").unwrap();
        let s = layout.new_staging("download", &v).unwrap();
        fs::write(s.join("partial"), b"xx").unwrap();
        std::os::unix::fs::symlink("releases/1.0", layout.tmp_link()).unwrap();
        let (removed, left) = layout.clean_staging().unwrap();
        assert!(left.is_empty());
        assert_eq!(removed.len(), 2);
        assert_eq!(fs::read_dir(layout.staging_dir()).unwrap().count(), 0);
        assert!(fs::symlink_metadata(layout.tmp_link()).is_err());
    }

    #[test]
    fn discard_and_list() {
        let (_d, layout) = layout();
        stage(&layout, "1.0");
        stage(&layout, "2.0");
        layout.discard("1.0").unwrap();
        let names: Vec<String> = layout.list().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["2.0"]);
        assert_eq!(fs::read_dir(layout.staging_dir()).unwrap().count(), 0);
    }

    #[test]
    fn a_link_not_into_releases_is_an_error() {
        let (_d, layout) = layout();
        std::os::unix::fs::symlink("/etc", layout.current_link()).unwrap();
        assert!(layout.active().is_err());
    }
}
