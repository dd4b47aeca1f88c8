//! Why an archive was not unpacked, and whose fault that is: the artifact's (reject it) or the
//! machine's (try again), as [`UnpackError::is_artifact_fault`] says. Entry names in messages
//! are cut to a readable length.

use std::io;

use crate::fsutil::PathError;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry that could escape or is not allowed in a release.
    #[error("unsafe entry {entry:?}: {reason}")]
    Unsafe { entry: String, reason: String },
    /// `entry` is the member being read when the limit was reached.
    #[error("entry {entry:?}: archive exceeds the {what} limit of {limit}")]
    Limit {
        entry: String,
        what: &'static str,
        limit: u64,
    },
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    /// The system refused to create what `entry` describes.
    #[error("entry {entry:?}: {op}: {source}")]
    Refused {
        entry: String,
        op: &'static str,
        source: io::Error,
    },
    /// Reading the archive or writing failed outside any one entry: not the artifact's fault.
    #[error(transparent)]
    Io(#[from] PathError),
    /// The system could not read the downloaded archive (an I/O error, say): the machine's
    /// fault, whatever the archive holds.
    #[error("reading the archive: {0}")]
    Read(io::Error),
}

impl UnpackError {
    /// Whether the artifact itself is bad (reject it) rather than the machine (retry later).
    /// What the system refuses to make of an entry is the entry's fault, unless the reason is
    /// one the machine would give any entry (a full disk, an I/O error, no permission on our
    /// own directories).
    pub fn is_artifact_fault(&self) -> bool {
        match self {
            UnpackError::Io(_) | UnpackError::Read(_) => false,
            UnpackError::Refused { source, .. } => !crate::fsutil::is_machine_fault(source),
            _ => true,
        }
    }
}

/// Turns an error from creating or changing an entry's file into [`UnpackError::Refused`].
pub(super) trait EntryContext<T> {
    fn refused(self, op: &'static str, entry: &str) -> Result<T, UnpackError>;
}

impl<T> EntryContext<T> for io::Result<T> {
    fn refused(self, op: &'static str, entry: &str) -> Result<T, UnpackError> {
        self.map_err(|source| UnpackError::Refused {
            entry: shorten(entry),
            op,
            source,
        })
    }
}

/// A read error: what the decompressor or the tar framing says of the bytes is the archive's
/// fault; an error the system gave while reading the file is not.
pub(super) fn corrupt(e: io::Error) -> UnpackError {
    match e.raw_os_error() {
        Some(_) => UnpackError::Read(e),
        None => UnpackError::Corrupt(e.to_string()),
    }
}

/// A read error between members, where `last` is the last member read (for the message).
pub(super) fn read_error(e: io::Error, last: &str) -> UnpackError {
    match map_read_error(e, "") {
        UnpackError::Corrupt(reason) if !last.is_empty() => {
            UnpackError::Corrupt(format!("after entry {:?}: {reason}", shorten(last)))
        }
        UnpackError::Limit { what, limit, .. } => UnpackError::Limit {
            entry: shorten(last),
            what,
            limit,
        },
        other => other,
    }
}

pub(super) fn unsafe_entry(entry: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Unsafe {
        entry: shorten(entry),
        reason: reason.into(),
    }
}

/// An entry name as it goes into a message: names of hostile length are cut, with their length.
pub(super) fn shorten(name: &str) -> String {
    const SHOWN: usize = 100;
    if name.len() <= 2 * SHOWN {
        return name.to_owned();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &name[..end], name.len())
}

/// A read error inside the data of `entry`.
pub(super) fn map_read_error(e: io::Error, entry: &str) -> UnpackError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<CapExceeded>())
    {
        Some(c) => UnpackError::Limit {
            entry: shorten(entry),
            what: "unpacked size",
            limit: c.0,
        },
        None if entry.is_empty() || e.raw_os_error().is_some() => corrupt(e),
        None => UnpackError::Corrupt(format!("in entry {:?}: {e}", shorten(entry))),
    }
}

#[derive(Debug)]
pub(super) struct CapExceeded(pub(super) u64);

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "decompressed stream exceeds the unpacked size limit of {}",
            self.0
        )
    }
}

impl std::error::Error for CapExceeded {}
