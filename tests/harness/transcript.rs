//! What an operator sees of a test, recorded so that two builds of drover can be compared: with
//! `DROVER_TRANSCRIPTS=DIR` set, every container writes, as it goes away, drover's journal events
//! and each `drover status --json` the test read to `DIR/<test>.<n>.jsonl` (`n` counts the test's
//! containers), with what differs from one run to the next masked: times, digests, instance and
//! machine ids, temporary paths, durations. `make transcripts` runs the e2e scenarios with two
//! binaries and compares what they wrote.

use serde_json::{Map, Value};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct Transcript {
    path: PathBuf,
    statuses: Mutex<Vec<Value>>,
}

thread_local! {
    /// Containers this test (a thread of the test harness) has made.
    static MADE: Cell<usize> = const { Cell::new(0) };
}

impl Transcript {
    /// A transcript for the next container of the running test, when `DROVER_TRANSCRIPTS` is set.
    pub fn for_this_test() -> Option<Transcript> {
        let dir = PathBuf::from(std::env::var_os("DROVER_TRANSCRIPTS")?);
        let n = MADE.with(|made| made.replace(made.get() + 1));
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("main").replace("::", ".");
        Some(Transcript {
            path: dir.join(format!("{test}.{n}.jsonl")),
            statuses: Mutex::new(Vec::new()),
        })
    }

    /// Remembers a `drover status --json` the test read.
    pub fn status(&self, status: &Value) {
        self.statuses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(mask_value(None, status));
    }

    /// Writes the transcript: the events of `journal` (`journalctl -o json` lines), then the
    /// statuses, one JSON object per line.
    pub fn write(&self, journal: &str) {
        let mut lines: Vec<String> = journal
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|entry| event(&entry))
            .map(|event| event.to_string())
            .collect();
        let statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        lines.extend(statuses.iter().map(|s| format!("{{\"status\":{s}}}")));
        write_lines(&self.path, &lines);
    }
}

fn write_lines(path: &Path, lines: &[String]) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("cannot write the transcript {}: {e}", path.display());
    }
}

/// An entry of drover's journal as an operator reads it: the fields drover wrote (not
/// journald's own, and not the source location, which a refactoring moves), masked.
fn event(entry: &Value) -> Option<Value> {
    let fields = entry.as_object()?;
    fields.get("EVENT")?;
    let kept: Map<String, Value> = fields
        .iter()
        .filter(|(key, _)| !is_journald_field(key))
        .map(|(key, value)| (key.clone(), mask_value(Some(key), value)))
        .collect();
    Some(Value::Object(kept))
}

fn is_journald_field(key: &str) -> bool {
    key.starts_with('_')
        || key.starts_with("CODE_")
        || matches!(key, "SYSLOG_TIMESTAMP" | "SYSLOG_PID" | "TID" | "TARGET")
}

/// Masks what varies between runs in `value` (a field `key`'s, if it is one).
fn mask_value(key: Option<&str>, value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(mask(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| mask_value(key, v)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), mask_value(Some(k), v)))
                .collect(),
        ),
        Value::Number(_) if key.is_some_and(is_time_key) => Value::String("<n>".into()),
        other => other.clone(),
    }
}

/// Status fields that count time.
fn is_time_key(key: &str) -> bool {
    key == "at"
        || ["_at", "seconds", "_ms", "age", "since"]
            .iter()
            .any(|part| key.ends_with(part))
}

/// Masks the words of `text` that vary between runs; the rest is kept byte for byte.
pub fn mask(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || "._:+-".contains(c) {
            word.push(c);
            continue;
        }
        out.push_str(&mask_word(&word));
        word.clear();
        out.push(c);
    }
    out.push_str(&mask_word(&word));
    mask_sizes(&out)
}

/// A test's artifacts are built afresh, with the time in their headers, so their compressed
/// size varies by a byte or two: `2105 bytes` is `<n> bytes`.
fn mask_sizes(text: &str) -> String {
    let parts: Vec<&str> = text.split(" bytes").collect();
    let mut out = String::with_capacity(text.len());
    for (i, part) in parts.iter().enumerate() {
        let digits = part.len() - part.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        match i + 1 < parts.len() && digits > 0 {
            true => {
                out.push_str(&part[..part.len() - digits]);
                out.push_str("<n> bytes");
            }
            false if i + 1 < parts.len() => {
                out.push_str(part);
                out.push_str(" bytes");
            }
            false => out.push_str(part),
        }
    }
    out
}

fn mask_word(word: &str) -> String {
    let is_hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
    let b = word.as_bytes();
    if b.len() >= 20 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[10] == b'T' {
        return "<time>".into();
    }
    if word.len() >= 16 && is_hex(word) {
        return "<hex>".into();
    }
    if let Some(id) = word
        .strip_prefix("i-")
        .filter(|id| id.len() >= 8 && is_hex(id))
    {
        let _ = id;
        return "i-<hex>".into();
    }
    if word.starts_with("drover-t-") {
        return "<machine>".into();
    }
    if word.starts_with(".tmp") {
        return "<tmp>".into();
    }
    // A hook's scope is named after its process id: `drover-hook-validate-198.scope`.
    if let Some(unit) = word.strip_suffix(".scope") {
        if let Some((name, pid)) = unit.rsplit_once('-') {
            if pid.chars().all(|c| c.is_ascii_digit()) {
                return format!("{name}-<pid>.scope");
            }
        }
    }
    // A port the test picked: `127.0.0.1:46753`.
    if let Some((host, port)) = word.rsplit_once(':') {
        if host.starts_with("127.") && port.parse::<u16>().is_ok() {
            return format!("{host}:<port>");
        }
    }
    // Names the harness makes unique with its process id: `drover-6628-traversal-4`.
    let pid = std::process::id().to_string();
    if word.split('-').any(|part| part == pid) {
        let parts: Vec<&str> = word
            .split('-')
            .map(|p| if p == pid { "<pid>" } else { p })
            .collect();
        return parts.join("-");
    }
    // A measured duration or rate: one decimal point, digits around it ("0.4", "12.25").
    if let Some((whole, fraction)) = word.split_once('.') {
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if digits(whole) && digits(fraction) {
            return "<d>".into();
        }
    }
    word.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_varies_is_masked_and_the_rest_kept() {
        assert_eq!(
            mask("The validate hook of 1.0.0 passed in 0.4 s"),
            "The validate hook of 1.0.0 passed in <d> s"
        );
        assert_eq!(
            mask("at 2026-12-07T01:20:12Z on i-0123456789abcdef0, sha256 0123456789abcdef0123"),
            "at <time> on i-<hex>, sha256 <hex>"
        );
        assert_eq!(
            mask("/tmp/.tmpAbC123/x in drover-t-123-4"),
            "/tmp/<tmp>/x in <machine>"
        );
        assert_eq!(
            mask(&format!(
                "s3://drover-{}-x-4/a http://127.0.0.1:46753/health",
                std::process::id()
            )),
            "s3://drover-<pid>-x-4/a http://127.0.0.1:<port>/health"
        );
        assert_eq!(
            mask("0::/system.slice/drover-hook-pre-activate-198.scope"),
            "0::/system.slice/drover-hook-pre-activate-<pid>.scope"
        );
        assert_eq!(
            mask("Verified a: 2105 bytes, b bytes"),
            "Verified a: <n> bytes, b bytes"
        );
    }
}
