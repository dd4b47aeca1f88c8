//! The pure half of a download in parts: how an object is cut into byte ranges, which of them a
//! partial download already has (its record, kept beside the data), and how far the contiguous
//! prefix reaches, which is what the digests may be computed over.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::store::ObjectInfo;

/// An object of `len` bytes cut into parts of `part_size` (the last may be shorter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub len: u64,
    pub part_size: u64,
}

impl Plan {
    pub fn count(&self) -> usize {
        self.len.div_ceil(self.part_size) as usize
    }

    /// The bytes of part `i`.
    pub fn range(&self, i: usize) -> Range<u64> {
        let start = i as u64 * self.part_size;
        start..(start + self.part_size).min(self.len)
    }
}

/// What a partial download has, saved after each part it completes. Valid only for the same
/// object (key and entity tag), the same expected digest and the same cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub etag: String,
    pub sha256: String,
    pub len: u64,
    pub part_size: u64,
    /// The parts written whole, in no particular order.
    pub done: Vec<usize>,
}

impl Record {
    pub fn new(key: &str, info: &ObjectInfo, expected: Sha256Digest, plan: Plan) -> Self {
        Self {
            key: key.to_owned(),
            etag: info.etag.clone(),
            sha256: expected.to_string(),
            len: plan.len,
            part_size: plan.part_size,
            done: Vec::new(),
        }
    }

    /// Whether `self` (as read back) describes a download of the same bytes as `fresh` would:
    /// only then may its parts be kept.
    pub fn continues(&self, fresh: &Record) -> bool {
        let same = self.key == fresh.key
            && self.etag == fresh.etag
            && self.sha256 == fresh.sha256
            && self.len == fresh.len
            && self.part_size == fresh.part_size;
        let count = Plan {
            len: self.len,
            part_size: self.part_size,
        }
        .count();
        same && self.done.iter().all(|&i| i < count)
    }

    /// Which parts are done, by index.
    pub fn done_set(&self, count: usize) -> Vec<bool> {
        let mut done = vec![false; count];
        for &i in &self.done {
            if let Some(d) = done.get_mut(i) {
                *d = true;
            }
        }
        done
    }

    /// The bytes the done parts hold.
    pub fn done_bytes(&self, plan: Plan) -> u64 {
        let mut parts = self.done.clone();
        parts.sort_unstable();
        parts.dedup();
        parts
            .iter()
            .map(|&i| plan.range(i))
            .map(|r| r.end - r.start)
            .sum()
    }
}

/// Where the contiguous prefix of done parts ends, in bytes: the hash may run up to here.
pub fn frontier(plan: Plan, done: &[bool]) -> u64 {
    match done.iter().position(|d| !d) {
        Some(i) => plan.range(i).start,
        None => plan.len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn info(etag: &str) -> ObjectInfo {
        ObjectInfo {
            len: 40 * MIB + 1,
            etag: etag.into(),
            unpacked_size: None,
        }
    }

    #[test]
    fn parts_cover_the_object_once_and_the_last_is_short() {
        let plan = Plan {
            len: 40 * MIB + 1,
            part_size: 16 * MIB,
        };
        assert_eq!(plan.count(), 3);
        assert_eq!(plan.range(0), 0..16 * MIB);
        assert_eq!(plan.range(2), 32 * MIB..40 * MIB + 1);
        let exact = Plan {
            len: 32 * MIB,
            part_size: 16 * MIB,
        };
        assert_eq!(exact.count(), 2);
        assert_eq!(exact.range(1), 16 * MIB..32 * MIB);
    }

    #[test]
    fn the_frontier_stops_at_the_first_missing_part() {
        let plan = Plan {
            len: 40 * MIB + 1,
            part_size: 16 * MIB,
        };
        assert_eq!(frontier(plan, &[false, true, true]), 0);
        assert_eq!(frontier(plan, &[true, false, true]), 16 * MIB);
        assert_eq!(frontier(plan, &[true, true, true]), 40 * MIB + 1);
    }

    #[test]
    fn a_record_continues_only_the_same_object_digest_and_cut() {
        let digest = Sha256Digest::of(b"a");
        let plan = Plan {
            len: 40 * MIB + 1,
            part_size: 16 * MIB,
        };
        let fresh = Record::new("k", &info("\"e1\""), digest, plan);
        let mut saved = fresh.clone();
        saved.done = vec![2, 0];
        assert!(saved.continues(&fresh));
        assert_eq!(saved.done_set(3), [true, false, true]);
        assert_eq!(saved.done_bytes(plan), 16 * MIB + 8 * MIB + 1);

        let replaced = Record::new("k", &info("\"e2\""), digest, plan);
        assert!(!saved.continues(&replaced), "another ETag: start over");
        let other_digest = Record::new("k", &info("\"e1\""), Sha256Digest::of(b"b"), plan);
        assert!(!saved.continues(&other_digest));
        let recut = Record::new(
            "k",
            &info("\"e1\""),
            digest,
            Plan {
                part_size: 8 * MIB,
                ..plan
            },
        );
        assert!(!saved.continues(&recut), "another part size: start over");
        let mut beyond = saved.clone();
        beyond.done.push(3);
        assert!(!beyond.continues(&fresh), "a part the object does not have");
    }
}
