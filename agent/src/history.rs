//! `drover history`: the outcomes of the passes that did something on this instance (deploys,
//! reverts, rejections, aborts, failures, environments applied or reverted, `drover rollback`,
//! invalid requests), one JSON line each in `{state_dir}/history.jsonl`, newest last. Passes that
//! only found the instance in sync, or waiting, leave nothing here.
//!
//! The file stays small: each new entry rewrites it with at most [`MAX_ENTRIES`] (a temporary
//! file, fsynced, renamed into place, as `state.json`), so a crash leaves the old file or the new
//! one. A line that cannot be read is skipped with a warning, and the file that held it is set
//! aside as `history.jsonl.corrupt` when it is next rewritten: history never stops a pass.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, IoContext, PathError};
use crate::state::Verdict;

/// How many entries the file keeps; older ones are dropped first.
pub const MAX_ENTRIES: usize = 100;
/// How much of the file is read: its last MiB (100 entries take a few KiB).
const READ_AT_MOST: u64 = 1 << 20;
/// The longest error kept in an entry of the file.
pub const MAX_ERROR: usize = 2000;
/// What `drover history --json` and the status objects' `recent` say their format is.
pub const SCHEMA: u32 = 1;

/// One outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Option<String>,
    /// The request's parameter version; `None` for `drover rollback`.
    pub parameter_version: Option<i64>,
    pub result: Verdict,
    #[serde(default)]
    pub error: Option<String>,
    /// When the pass began and the outcome was recorded (RFC 3339, UTC).
    pub started: String,
    pub ended: String,
    pub duration_ms: u64,
}

impl Entry {
    /// An entry for `record`, of a pass that began at `started` and took `took`.
    pub fn of(
        record: &crate::state::Record,
        started: SystemTime,
        took: Duration,
        max_error: usize,
    ) -> Entry {
        Entry {
            version: record.version.clone(),
            parameter_version: record.request.as_ref().map(|r| r.parameter_version),
            result: record.result,
            error: record.error.as_deref().map(|e| cut(e, max_error)),
            started: crate::rfc3339::format(started),
            ended: crate::rfc3339::format(started + took),
            duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The result as the JSON says it (`deployed`, `rolled_back`).
    pub fn result_name(&self) -> String {
        serde_json::to_value(self.result)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// This entry with its error cut to `max` bytes (for the status objects).
    pub fn shortened(&self, max: usize) -> Entry {
        Entry {
            error: self.error.as_deref().map(|e| cut(e, max)),
            ..self.clone()
        }
    }
}

/// `text` cut to at most `max` bytes, on a character boundary, marked with `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// What reading the file found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Oldest first.
    pub entries: Vec<Entry>,
    /// Lines that were not entries (numbered from 1 within what was read).
    pub skipped: Vec<usize>,
}

pub struct HistoryFile {
    path: PathBuf,
}

impl HistoryFile {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("history.jsonl"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries, oldest first; none without a file. Only the last MiB is read.
    pub fn load(&self) -> Result<Loaded, PathError> {
        let mut file = match std::fs::File::open(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Loaded::default()),
            other => other.at("open", &self.path)?,
        };
        let len = file.metadata().at("stat", &self.path)?.len();
        let from = len.saturating_sub(READ_AT_MOST);
        file.seek(SeekFrom::Start(from)).at("seek", &self.path)?;
        let mut bytes = Vec::new();
        (file.take(READ_AT_MOST))
            .read_to_end(&mut bytes)
            .at("read", &self.path)?;
        // Read from the middle of a line: that line is not whole.
        if from > 0 {
            let start = bytes
                .iter()
                .position(|&b| b == b'\n')
                .map_or(bytes.len(), |i| i + 1);
            bytes.drain(..start);
        }
        Ok(parse(&bytes))
    }

    /// The last `n` entries, newest first, with a warning for each line skipped.
    pub fn recent(&self, n: usize) -> Result<Vec<Entry>, PathError> {
        let loaded = self.load()?;
        warn_skipped(&self.path, &loaded.skipped);
        Ok(loaded.entries.into_iter().rev().take(n).collect())
    }

    /// Adds `entry`, keeping the last [`MAX_ENTRIES`]. A file with unreadable lines is moved
    /// aside (`history.jsonl.corrupt`) before the readable ones are written back.
    pub fn append(&self, entry: Entry) -> Result<(), PathError> {
        let Loaded {
            mut entries,
            skipped,
        } = self.load()?;
        if !skipped.is_empty() {
            let aside = self.path.with_extension("jsonl.corrupt");
            warn_skipped(&self.path, &skipped);
            tracing::warn!(target: "drover", aside = %aside.display(),
                "moving the history aside; its readable entries are kept");
            std::fs::rename(&self.path, &aside).at("rename", &aside)?;
        }
        entries.push(entry);
        let excess = entries.len().saturating_sub(MAX_ENTRIES);
        entries.drain(..excess);
        let mut bytes = Vec::new();
        for e in &entries {
            if let Ok(line) = serde_json::to_vec(e) {
                bytes.extend_from_slice(&line);
                bytes.push(b'\n');
            }
        }
        fsutil::write_atomic(&self.path, &bytes, 0o600)
    }
}

fn parse(bytes: &[u8]) -> Loaded {
    let mut loaded = Loaded::default();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(entry) => loaded.entries.push(entry),
            Err(_) => loaded.skipped.push(n + 1),
        }
    }
    loaded
}

fn warn_skipped(path: &Path, skipped: &[usize]) {
    if !skipped.is_empty() {
        tracing::warn!(target: "drover", path = %path.display(), lines = ?skipped,
            "skipping history lines that are not entries");
    }
}

/// `drover history --json`.
#[derive(Serialize)]
pub struct Listing {
    pub schema: u32,
    /// Newest first.
    pub entries: Vec<Entry>,
}

/// `drover history [--json] [-n N]`: the last `n` outcomes, newest first, as text or JSON.
pub fn show(state_dir: &Path, n: usize, json: bool) -> Result<String, String> {
    let file = HistoryFile::new(state_dir);
    let entries = file.recent(n).map_err(|e| e.to_string())?;
    if !json {
        return Ok(render(&entries));
    }
    let listing = Listing {
        schema: SCHEMA,
        entries,
    };
    let text = serde_json::to_string_pretty(&listing).map_err(|e| e.to_string())?;
    Ok(text + "\n")
}

/// `drover history [-n N]` as text: one line per outcome, newest first.
pub fn render(entries: &[Entry]) -> String {
    if entries.is_empty() {
        return "no deploys recorded yet\n".to_owned();
    }
    let mut out = format!(
        "{:<20}  {:<20}  {:<16}  {:>9}  {:>9}  error\n",
        "ended", "result", "version", "parameter", "took"
    );
    for e in entries {
        let parameter = e.parameter_version.map(|n| n.to_string());
        out += &format!(
            "{:<20}  {:<20}  {:<16}  {:>9}  {:>9}  {}\n",
            e.ended,
            e.result_name(),
            e.version.as_deref().unwrap_or("-"),
            parameter.as_deref().unwrap_or("-"),
            duration(e.duration_ms),
            e.error.as_deref().unwrap_or("").escape_debug()
        )
        .replace("  \n", "\n");
    }
    out
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0 => format!("{ms}ms"),
        1..=59 => format!("{}.{}s", secs, ms % 1000 / 100),
        60..=3599 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Record, Request};

    fn entry(n: i64) -> Entry {
        let record = Record {
            result: Verdict::Deployed,
            version: Some(format!("1.{n}")),
            request: Some(Request {
                value: format!("1.{n}"),
                parameter_version: n,
            }),
            error: None,
            at: 0,
        };
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n as u64);
        Entry::of(&record, started, Duration::from_millis(1500), MAX_ERROR)
    }

    #[test]
    fn entries_are_kept_to_the_last_hundred_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::new(dir.path());
        assert!(file.recent(20).unwrap().is_empty());
        for n in 0..(MAX_ENTRIES as i64 + 30) {
            file.append(entry(n)).unwrap();
        }
        let all = file.load().unwrap();
        assert_eq!(all.entries.len(), MAX_ENTRIES);
        assert_eq!(all.entries[0], entry(30), "the oldest are dropped");
        let recent = file.recent(3).unwrap();
        let versions: Vec<_> = recent.iter().map(|e| e.parameter_version).collect();
        assert_eq!(versions, [Some(129), Some(128), Some(127)]);
        assert_eq!(recent[0].duration_ms, 1500);
        assert_eq!(recent[0].ended, "2027-01-15T08:02:10Z");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(".history.jsonl.tmp").exists());
    }

    #[test]
    fn corrupt_lines_are_skipped_and_the_file_set_aside_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::new(dir.path());
        file.append(entry(1)).unwrap();
        let mut text = std::fs::read(file.path()).unwrap();
        text.extend_from_slice(b"{\"version\": \"half a li\n\xff\xfe binary\n");
        std::fs::write(file.path(), &text).unwrap();
        let recent = file.recent(20).unwrap();
        assert_eq!(recent, [entry(1)]);
        assert_eq!(file.load().unwrap().skipped, [2, 3]);

        file.append(entry(2)).unwrap();
        let aside = dir.path().join("history.jsonl.corrupt");
        assert_eq!(std::fs::read(&aside).unwrap(), text, "kept as it was");
        let loaded = file.load().unwrap();
        assert_eq!(
            (loaded.entries, loaded.skipped),
            (vec![entry(1), entry(2)], vec![])
        );

        // Nothing readable at all: a fresh start, the old file aside.
        std::fs::write(file.path(), b"\0\0\0").unwrap();
        assert!(file.recent(5).unwrap().is_empty());
        file.append(entry(3)).unwrap();
        assert_eq!(file.load().unwrap().entries, [entry(3)]);
    }

    #[test]
    fn only_the_end_of_a_huge_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = HistoryFile::new(dir.path());
        let line = serde_json::to_string(&entry(7)).unwrap();
        let mut text = "x".repeat(READ_AT_MOST as usize);
        text.push('\n');
        for _ in 0..3 {
            text += &line;
            text.push('\n');
        }
        std::fs::write(file.path(), text).unwrap();
        let loaded = file.load().unwrap();
        assert_eq!(loaded.entries.len(), 3);
        assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    }

    #[test]
    fn errors_are_cut_and_durations_read_well() {
        let mut record = Record {
            result: Verdict::Reverted,
            version: Some("2".into()),
            request: None,
            error: Some("é".repeat(2000)),
            at: 0,
        };
        let e = Entry::of(&record, SystemTime::UNIX_EPOCH, Duration::ZERO, MAX_ERROR);
        let error = e.error.clone().unwrap();
        assert!(
            error.len() <= MAX_ERROR && error.ends_with('…'),
            "{}",
            error.len()
        );
        assert!(e.shortened(10).error.unwrap().len() <= 10);
        assert_eq!(e.result_name(), "reverted");
        record.error = None;
        assert_eq!(
            Entry::of(&record, SystemTime::UNIX_EPOCH, Duration::ZERO, 5).error,
            None
        );
        let text = render(&[e]);
        assert!(text.lines().nth(1).unwrap().contains("reverted"), "{text}");
        for (ms, text) in [
            (850, "850ms"),
            (12_345, "12.3s"),
            (245_000, "4m05s"),
            (7_380_000, "2h03m"),
        ] {
            assert_eq!(duration(ms), text);
        }
    }
}
