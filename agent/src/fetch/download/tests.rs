//! The download's pure parts against in-memory stores: [`MemStore`] (also the reconcile
//! tests' bucket) and a store that stalls.

use super::*;
use crate::store::{Condition, Tagged};
use std::collections::HashMap;

/// An in-memory store for the pure parts: objects served in fixed-size chunks. An object's
/// entity tag is its SHA-256.
pub struct MemStore(pub HashMap<String, Vec<u8>>);

impl MemStore {
    fn object(&self, key: &str) -> Result<&Vec<u8>, StoreError> {
        self.0.get(key).ok_or_else(|| StoreError::NotFound {
            bucket: "mem".into(),
            key: key.into(),
        })
    }
}

fn chunked(data: &[u8]) -> MemBody {
    let chunks = data.chunks(7).map(bytes::Bytes::copy_from_slice).collect();
    MemBody(chunks, data.len() as u64)
}

pub struct MemBody(Vec<bytes::Bytes>, u64);

impl ObjectBody for MemBody {
    fn announced_len(&self) -> Option<u64> {
        Some(self.1)
    }
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StoreError> {
        Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
    }
}

impl ArtifactStore for MemStore {
    type Body = MemBody;
    async fn get(&self, key: &str) -> Result<MemBody, StoreError> {
        Ok(chunked(self.object(key)?))
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let data = self.object(key)?;
        Ok(ObjectInfo {
            len: data.len() as u64,
            etag: Sha256Digest::of(data).to_string(),
            unpacked_size: None,
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        etag: &str,
    ) -> Result<MemBody, StoreError> {
        let data = self.object(key)?;
        if Sha256Digest::of(data).to_string() != etag {
            return Err(StoreError::Changed {
                bucket: "mem".into(),
                key: key.into(),
                etag: etag.into(),
            });
        }
        Ok(chunked(&data[range.start as usize..range.end as usize]))
    }

    /// Status objects are not kept: the reconcile tests seed the keys they list.
    async fn put_small(&self, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn get_tagged(&self, key: &str, _: usize) -> Result<Option<Tagged>, StoreError> {
        Ok(self.0.get(key).map(|body| Tagged {
            body: body.clone(),
            etag: format!("{}", body.len()),
        }))
    }

    /// Nothing here takes leases: see `lease.rs` for a store that keeps what it is given.
    async fn put_if(
        &self,
        key: &str,
        _: Vec<u8>,
        _: Condition,
    ) -> Result<Option<String>, StoreError> {
        Err(StoreError::Failed {
            bucket: "mem".into(),
            key: key.into(),
            message: "read-only".into(),
        })
    }

    async fn list_keys(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let mut keys: Vec<String> = (self.0.keys())
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        keys.truncate(max);
        Ok(keys)
    }
}

fn store(objects: &[(&str, &[u8])]) -> MemStore {
    MemStore(
        objects
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
    )
}

const DAY: Duration = Duration::from_secs(86400);

#[tokio::test]
async fn digest_from_value_wins_then_digest_file() {
    let d = Sha256Digest::of(b"x");
    let s = store(&[(
        "a.tgz.sha256",
        format!("{}  a.tgz\n", Sha256Digest::of(b"y")).as_bytes(),
    )]);
    assert_eq!(expected_digest(&s, "a.tgz", Some(d), DAY).await.unwrap(), d);
    assert_eq!(
        expected_digest(&s, "a.tgz", None, DAY).await.unwrap(),
        Sha256Digest::of(b"y")
    );
    let missing = expected_digest(&s, "b.tgz", None, DAY).await.unwrap_err();
    assert!(matches!(
        missing,
        FetchError::Store(StoreError::NotFound { .. })
    ));
    assert!(
        !missing.is_artifact_fault(),
        "a missing digest may still be uploading"
    );
    let bad = store(&[("a.tgz.sha256", b"nope")]);
    let err = expected_digest(&bad, "a.tgz", None, DAY).await.unwrap_err();
    assert!(err.is_artifact_fault());
    assert!(err.to_string().contains("a.tgz.sha256"), "{err}");
}

/// A store whose objects start and then never send another byte.
struct StalledStore;

impl ArtifactStore for StalledStore {
    type Body = StalledStore;
    async fn get(&self, _: &str) -> Result<StalledStore, StoreError> {
        Ok(StalledStore)
    }
    async fn head(&self, _: &str) -> Result<ObjectInfo, StoreError> {
        std::future::pending().await
    }
    async fn get_range(
        &self,
        _: &str,
        _: std::ops::Range<u64>,
        _: &str,
    ) -> Result<StalledStore, StoreError> {
        Ok(StalledStore)
    }
    async fn put_small(&self, _: &str, _: Vec<u8>) -> Result<(), StoreError> {
        std::future::pending().await
    }
    async fn get_tagged(&self, _: &str, _: usize) -> Result<Option<Tagged>, StoreError> {
        std::future::pending().await
    }
    async fn put_if(
        &self,
        _: &str,
        _: Vec<u8>,
        _: Condition,
    ) -> Result<Option<String>, StoreError> {
        std::future::pending().await
    }
    async fn list_keys(&self, _: &str, _: usize) -> Result<Vec<String>, StoreError> {
        std::future::pending().await
    }
}

impl ObjectBody for StalledStore {
    fn announced_len(&self) -> Option<u64> {
        Some(80)
    }
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StoreError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_stalled_digest_file_times_out_naming_it() {
    let err = expected_digest(&StalledStore, "a.tgz", None, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Timeout { key, seconds: 5 } if key == "a.tgz.sha256"),
        "{err}"
    );
    assert!(
        !err.is_artifact_fault(),
        "a slow network, not a bad artifact"
    );
}

/// The download of `key` from `s` into `dir`, in parts of `part_size` over 3 connections.
pub(crate) async fn fetch(
    s: &impl ArtifactStore,
    key: &str,
    expected: Sha256Digest,
    max_size: u64,
    part_size: u64,
    dir: &Path,
) -> Result<Downloaded, FetchError> {
    let transfer = Transfer {
        key,
        expected,
        max_size,
        timeout: DAY,
        prehash: false,
        connections: 3,
        part_size,
    };
    let info = s.head(key).await?;
    download(s, &transfer, &info, &partial_in(dir)).await
}

pub(crate) fn partial_in(dir: &Path) -> Partial {
    Partial {
        data: dir.join("a.part"),
        record: dir.join("a.part.json"),
    }
}

#[tokio::test]
async fn download_verifies_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let data = b"the quick brown fox jumps over the lazy dog";
    let s = store(&[("a", data)]);
    for part_size in [1000, 10] {
        let got = fetch(&s, "a", Sha256Digest::of(data), 1000, part_size, dir.path())
            .await
            .unwrap();
        assert_eq!(got.len, data.len() as u64);
        assert!(got.prehash.is_none());
        assert_eq!(std::fs::read(dir.path().join("a.part")).unwrap(), data);
    }

    let err = fetch(&s, "a", Sha256Digest::of(b"other"), 1000, 1000, dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Mismatch { .. }) && err.is_artifact_fault());
    assert!(
        !dir.path().join("a.part").exists(),
        "wrong bytes are not kept"
    );

    let err = fetch(&s, "a", Sha256Digest::of(data), 10, 1000, dir.path())
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooLarge { limit: 10, .. }));
}
