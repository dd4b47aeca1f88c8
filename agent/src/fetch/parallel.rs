//! An artifact downloaded in parts: ranged GETs over several connections at once (S3 serves
//! each connection at a capped rate), each pinned to the object's entity tag and written at its
//! offset in the partial file, with a record of the parts done kept beside it so that a download
//! cut short resumes where it stopped. The digests are computed on a blocking thread over the
//! contiguous prefix of done parts, read back from the file as it grows, so verification ends
//! with the last part and no part is held in memory.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::download::{Digests, Downloaded, FetchError};
use super::parts::{frontier, Plan, Record};
use crate::digest::Sha256Digest;
use crate::fsutil::{IoContext, PathError};
use crate::releases::Partial;
use crate::store::{ArtifactStore, ObjectBody, ObjectInfo, StoreError};

/// Attempts per part before the download fails (and the next pass resumes it). The SDK retries
/// a request that fails before its body starts; these cover a body cut short.
const PART_ATTEMPTS: u32 = 4;
/// The first retry of a part waits up to this long; each later one up to twice the last.
const PART_BACKOFF: Duration = Duration::from_millis(250);
/// The hashing thread's read size.
const HASH_CHUNK: usize = 256 << 10;

/// How an artifact is fetched in parts.
pub struct Parted<'a> {
    pub key: &'a str,
    pub info: &'a ObjectInfo,
    pub expected: Sha256Digest,
    pub part_size: u64,
    pub connections: usize,
    pub prehash: bool,
}

/// Shared by the workers, all on this task: no locks, no borrow across an await.
struct Progress {
    record: Record,
    done: Vec<bool>,
    queue: VecDeque<usize>,
}

/// Downloads `job` into `partial.data`, resuming from `partial.record` when it continues the
/// same object; returns the digests of the whole file and what was kept from before.
pub async fn download<S: ArtifactStore>(
    store: &S,
    job: &Parted<'_>,
    partial: &Partial,
) -> Result<(Sha256Digest, Downloaded), FetchError> {
    let plan = Plan {
        len: job.info.len,
        part_size: job.part_size,
    };
    let fresh = Record::new(job.key, job.info, job.expected, plan);
    let record = match read_record(&partial.record) {
        Some(saved) if saved.continues(&fresh) && file_len(&partial.data) == Some(plan.len) => {
            saved
        }
        _ => {
            // Gone before the file is emptied: a kill in between must not leave a record that
            // names parts the file no longer has.
            let _ = std::fs::remove_file(&partial.record);
            fresh
        }
    };
    let resumed = record.done_bytes(plan);
    let file = open_partial(&partial.data, plan.len, record.done.is_empty())?;
    let done = record.done_set(plan.count());
    let queue = (0..plan.count()).filter(|&i| !done[i]).collect();
    let start = frontier(plan, &done);
    let progress = RefCell::new(Progress {
        record,
        done,
        queue,
    });

    let (tx, rx) = mpsc::channel();
    let cancel = Arc::new(AtomicBool::new(false));
    // Also stops the hashing thread when this future is dropped (the download timeout).
    let _stop_on_drop = StopOnDrop(cancel.clone());
    let reader = file.try_clone().at("open", &partial.data)?;
    let (stop, path, prehash) = (cancel.clone(), partial.data.clone(), job.prehash);
    let hasher =
        tokio::task::spawn_blocking(move || hash_prefix(&reader, &path, prehash, rx, &stop));
    let _ = tx.send(start);

    let workers = (0..job.connections.max(1))
        .map(|_| worker(store, job, plan, &file, partial, &progress, &tx));
    let fetched = futures_util::future::try_join_all(workers).await;
    if fetched.is_err() {
        cancel.store(true, Ordering::Relaxed);
    }
    drop(tx);
    let hashed = hasher.await.map_err(|e| PathError {
        op: "hash",
        path: partial.data.clone(),
        source: std::io::Error::other(e.to_string()),
    });
    fetched?;
    let (digests, len) = hashed??;
    if len != plan.len {
        return Err(FetchError::Part {
            key: job.key.to_owned(),
            start: len,
            end: plan.len,
            reason: "not hashed".into(),
        });
    }
    Ok(digests.done(len, resumed))
}

/// Sets the flag the hashing thread checks, when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Takes parts off the queue until it is empty: fetches each (retrying it alone), then records
/// it done and moves the hash's frontier.
async fn worker<S: ArtifactStore>(
    store: &S,
    job: &Parted<'_>,
    plan: Plan,
    file: &File,
    partial: &Partial,
    progress: &RefCell<Progress>,
    frontier_tx: &mpsc::Sender<u64>,
) -> Result<(), FetchError> {
    loop {
        let Some(i) = progress.borrow_mut().queue.pop_front() else {
            return Ok(());
        };
        fetch_part(store, job, plan.range(i), file, &partial.data).await?;
        let reach = {
            let mut p = progress.borrow_mut();
            p.done[i] = true;
            p.record.done.push(i);
            write_record(&partial.record, &p.record)?;
            frontier(plan, &p.done)
        };
        let _ = frontier_tx.send(reach);
    }
}

/// One part, retried alone with full-jitter backoff when the network or the service failed it.
/// A replaced object, a missing one or a denied read fails at once.
async fn fetch_part<S: ArtifactStore>(
    store: &S,
    job: &Parted<'_>,
    range: std::ops::Range<u64>,
    file: &File,
    path: &Path,
) -> Result<(), FetchError> {
    let mut attempt = 1;
    loop {
        match fetch_part_once(store, job, range.clone(), file, path).await {
            Err(
                e @ (FetchError::Part { .. }
                | FetchError::Store(StoreError::Failed { .. } | StoreError::Throttled { .. })),
            ) if attempt < PART_ATTEMPTS => {
                tracing::info!(target: "drover", event = crate::events::Event::PartRetried.as_str(), key = job.key, start = range.start,
                    attempt, "part failed, retrying: {e}");
                let window = PART_BACKOFF.saturating_mul(1 << (attempt - 1));
                tokio::time::sleep(window.mul_f64(crate::plan::random_unit())).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn fetch_part_once<S: ArtifactStore>(
    store: &S,
    job: &Parted<'_>,
    range: std::ops::Range<u64>,
    file: &File,
    path: &Path,
) -> Result<(), FetchError> {
    let failed = |reason: String| FetchError::Part {
        key: job.key.to_owned(),
        start: range.start,
        end: range.end,
        reason,
    };
    let mut body = store
        .get_range(job.key, range.clone(), &job.info.etag)
        .await?;
    let mut at = range.start;
    while let Some(chunk) = body.next_chunk().await? {
        let end = at + chunk.len() as u64;
        if end > range.end {
            return Err(failed("the answer ran past the range".into()));
        }
        // Plain blocking writes: they go to the page cache.
        file.write_all_at(&chunk, at).at("write", path)?;
        at = end;
    }
    if at != range.end {
        return Err(failed(format!(
            "the answer ended after {} bytes",
            at - range.start
        )));
    }
    Ok(())
}

/// Hashes the file from the start up to each frontier it is sent, reading back what the
/// workers wrote (from the page cache), until the sender is dropped or `cancel` is set. Returns
/// the digests and how many bytes they cover.
fn hash_prefix(
    file: &File,
    path: &Path,
    prehash: bool,
    frontiers: mpsc::Receiver<u64>,
    cancel: &AtomicBool,
) -> Result<(Digests, u64), PathError> {
    let mut digests = Digests::new(prehash);
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut hashed = 0u64;
    while let Ok(mut reach) = frontiers.recv() {
        while let Ok(further) = frontiers.try_recv() {
            reach = reach.max(further);
        }
        while hashed < reach {
            if cancel.load(Ordering::Relaxed) {
                return Ok((digests, hashed));
            }
            let n = (reach - hashed).min(HASH_CHUNK as u64) as usize;
            file.read_exact_at(&mut buf[..n], hashed).at("read", path)?;
            digests.update(&buf[..n]);
            hashed += n as u64;
        }
    }
    Ok((digests, hashed))
}

/// Opens (or makes) the partial file at its full size; `fresh` empties it first.
fn open_partial(path: &Path, len: u64, fresh: bool) -> Result<File, PathError> {
    let file = open_download(path, fresh)?;
    file.set_len(len).at("size", path)?;
    Ok(file)
}

/// Opens (or makes) a download's file, readable and writable by root alone, never through a
/// symlink; `fresh` empties it.
pub(super) fn open_download(path: &Path, fresh: bool) -> Result<File, PathError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(fresh)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .at("open", path)
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

/// The saved record, or `None` when there is none or it cannot be read: then the download
/// starts over.
fn read_record(path: &Path) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Replaces the record: a new file renamed over the old one, so a kill -9 leaves the old record
/// or the new, each naming only parts written whole (no fsync: a kill leaves the page cache; a
/// power cut that loses parts shows as a digest mismatch, and a resumed download that does not
/// match starts over rather than rejecting the artifact).
fn write_record(path: &Path, record: &Record) -> Result<(), PathError> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec(record).map_err(|e| PathError {
        op: "encode",
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(&tmp, text).at("write", &tmp)?;
    std::fs::rename(&tmp, path).at("rename", path)
}

/// Removes a partial download and its record (after it was used or found wrong).
pub fn forget(partial: &Partial) {
    let _ = std::fs::remove_file(&partial.record);
    let _ = std::fs::remove_file(&partial.data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::download::tests::{fetch, partial_in, MemBody, MemStore};
    use crate::store::{Condition, Tagged};
    use std::cell::Cell;
    use std::ops::Range;

    /// A store in front of a [`MemStore`] that counts the bytes its ranged reads serve and cuts
    /// the first `cut` reads of the part at byte 300 off halfway, as a reset connection would.
    struct Flaky {
        inner: MemStore,
        served: Cell<u64>,
        reads: Cell<u32>,
        cut: Cell<u32>,
    }

    impl Flaky {
        fn new(key: &str, data: &[u8], cut: u32) -> Self {
            Self {
                inner: MemStore([(key.to_owned(), data.to_vec())].into()),
                served: Cell::new(0),
                reads: Cell::new(0),
                cut: Cell::new(cut),
            }
        }
    }

    impl ArtifactStore for Flaky {
        type Body = MemBody;
        async fn get(&self, key: &str) -> Result<MemBody, StoreError> {
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
            self.inner.head(key).await
        }
        async fn get_range(
            &self,
            key: &str,
            range: Range<u64>,
            etag: &str,
        ) -> Result<MemBody, StoreError> {
            self.reads.set(self.reads.get() + 1);
            let cut = range.start == 300 && self.cut.get() > 0;
            let end = match cut {
                true => range.start + (range.end - range.start) / 2,
                false => range.end,
            };
            if cut {
                self.cut.set(self.cut.get() - 1);
            }
            self.served.set(self.served.get() + end - range.start);
            self.inner.get_range(key, range.start..end, etag).await
        }
        async fn put_small(&self, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
            Ok(())
        }
        async fn get_tagged(&self, _: &str, _: usize) -> Result<Option<Tagged>, StoreError> {
            Ok(None)
        }
        async fn put_if(
            &self,
            _: &str,
            _: Vec<u8>,
            _: Condition,
        ) -> Result<Option<String>, StoreError> {
            Ok(None)
        }
        async fn list_keys(&self, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn parts_land_at_their_offsets_and_the_digest_covers_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(1000);
        let s = Flaky::new("a", &bytes, 0);
        let got = fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 64, dir.path())
            .await
            .unwrap();
        assert_eq!((got.len, got.resumed), (1000, 0));
        assert_eq!(std::fs::read(dir.path().join("a.part")).unwrap(), bytes);
        assert_eq!(s.reads.get(), 16, "1000 bytes in parts of 64");
        assert_eq!(s.served.get(), 1000);
        let record: Record =
            serde_json::from_slice(&std::fs::read(dir.path().join("a.part.json")).unwrap())
                .unwrap();
        assert_eq!(record.done_set(16), [true; 16]);
    }

    #[tokio::test]
    async fn a_part_cut_short_is_fetched_again_alone() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(1000);
        let s = Flaky::new("a", &bytes, 2);
        fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap();
        assert_eq!(s.reads.get(), 12, "10 parts and 2 retries");
        assert_eq!(s.served.get(), 1000 + 2 * 50);
    }

    #[tokio::test]
    async fn a_part_that_keeps_failing_fails_the_download_and_the_next_one_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(1000);
        let s = Flaky::new("a", &bytes, PART_ATTEMPTS);
        let err = fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap_err();
        assert!(!err.is_artifact_fault(), "{err}");
        assert!(
            err.to_string().contains("the answer ended after 50 bytes"),
            "{err}"
        );

        let before = s.served.get();
        let got = fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap();
        assert!(got.resumed > 0, "{got:?}");
        assert_eq!(s.served.get() - before, 1000 - got.resumed);
        assert_eq!(std::fs::read(dir.path().join("a.part")).unwrap(), bytes);
    }

    #[tokio::test]
    async fn a_record_of_another_object_is_not_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            data(1000),
            data(1000).iter().map(|b| !b).collect::<Vec<_>>(),
        );
        let first = Flaky::new("a", &old, PART_ATTEMPTS);
        fetch(&first, "a", Sha256Digest::of(&old), 10_000, 100, dir.path())
            .await
            .unwrap_err();
        // Replaced under the same key: another entity tag.
        let second = Flaky::new("a", &new, 0);
        let got = fetch(
            &second,
            "a",
            Sha256Digest::of(&new),
            10_000,
            100,
            dir.path(),
        )
        .await
        .unwrap();
        assert_eq!(got.resumed, 0);
        assert_eq!(second.served.get(), 1000);
        assert_eq!(std::fs::read(dir.path().join("a.part")).unwrap(), new);
    }

    #[tokio::test]
    async fn kept_parts_that_do_not_match_start_over_without_a_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(1000);
        let s = Flaky::new("a", &bytes, PART_ATTEMPTS);
        fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap_err();
        // What a power cut can do to parts the record names: they never reached the disk.
        let partial = partial_in(dir.path());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&partial.data)
            .unwrap();
        file.write_all_at(&[0; 1000], 0).unwrap();
        let err = fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::ResumedMismatch { .. }), "{err}");
        assert!(!err.is_artifact_fault());
        assert!(!partial.record.exists() && !partial.data.exists());
        fetch(&s, "a", Sha256Digest::of(&bytes), 10_000, 100, dir.path())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_replaced_object_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = data(1000);
        let s = Flaky::new("a", &bytes, 0);
        let transfer = crate::fetch::Transfer {
            key: "a",
            expected: Sha256Digest::of(&bytes),
            max_size: 10_000,
            timeout: Duration::from_secs(60),
            prehash: false,
            connections: 2,
            part_size: 100,
        };
        let mut info = s.head("a").await.unwrap();
        info.etag = "\"before\"".into();
        let err = crate::fetch::download(&s, &transfer, &info, &partial_in(dir.path()))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::Store(StoreError::Changed { etag, .. }) if etag == "\"before\""),
            "{err}"
        );
        assert!(
            s.reads.get() <= 2,
            "at most one read per connection, none retried"
        );
    }
}
