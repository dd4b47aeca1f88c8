//! Download of an artifact into the staging area, hashed as the bytes arrive and capped in size,
//! with its expected digest and signature read first. Nothing downstream sees the file unless
//! its digest (and signature) match.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::parallel::{self, Parted};
use crate::digest::{self, Hasher, Sha256Digest};
use crate::fsutil::{IoContext, PathError};
use crate::releases::Partial;
use crate::signature::{Binding, Prehash, PublicKey, Signature, SignatureError};
use crate::store::{self, ArtifactStore, ObjectBody, ObjectInfo, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("digest file {key} is malformed: {reason}")]
    BadDigestFile { key: String, reason: String },
    #[error("{key} is larger than the limit of {limit} bytes")]
    TooLarge { key: String, limit: u64 },
    #[error("{key}: sha256 mismatch: expected {expected}, got {actual}")]
    Mismatch {
        key: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// A download resumed from an earlier pass's parts did not match: those parts may not have
    /// reached the disk (a power cut), so it starts over rather than rejecting the artifact.
    #[error(
        "{key}: the resumed download did not match sha256 {expected} (got {actual}); starting over"
    )]
    ResumedMismatch {
        key: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// Not enough room on the release root's file system for the download and the unpack.
    #[error(
        "{path}: {needed} bytes needed for {key} ({download} to download, {unpacked} unpacked), \
         {free} free"
    )]
    NoSpace {
        path: PathBuf,
        key: String,
        needed: u64,
        download: u64,
        unpacked: u64,
        free: u64,
    },
    /// A ranged GET's answer did not bring the bytes asked for.
    #[error("{key}: bytes {start}..{end}: {reason}")]
    Part {
        key: String,
        start: u64,
        end: u64,
        reason: String,
    },
    #[error("{key}: download did not finish within {seconds} s")]
    Timeout { key: String, seconds: u64 },
    #[error("{key}: {source}")]
    Signature {
        key: String,
        source: crate::signature::SignatureError,
    },
    #[error(transparent)]
    Io(#[from] PathError),
}

impl FetchError {
    /// Whether the artifact itself is bad (reject it) rather than the network or the machine.
    pub fn is_artifact_fault(&self) -> bool {
        matches!(
            self,
            FetchError::BadDigestFile { .. }
                | FetchError::TooLarge { .. }
                | FetchError::Mismatch { .. }
                | FetchError::Signature { .. }
        )
    }
}

/// The digest the artifact must have: the one in the parameter's value, else the `{key}.sha256`
/// object, read within `timeout` (the download timeout: a digest file that trickles in a byte at a
/// time must not hold the agent for longer than the tarball may). No digest, no deploy.
pub async fn expected_digest<S: ArtifactStore>(
    store: &S,
    key: &str,
    from_value: Option<Sha256Digest>,
    timeout: Duration,
) -> Result<Sha256Digest, FetchError> {
    if let Some(d) = from_value {
        return Ok(d);
    }
    let digest_key = format!("{key}.sha256");
    let bytes = get_small_within(store, &digest_key, 4096, timeout).await?;
    let text = String::from_utf8(bytes).map_err(|_| FetchError::BadDigestFile {
        key: digest_key.clone(),
        reason: "not text".into(),
    })?;
    digest::parse_sha256sum(&text).map_err(|e| FetchError::BadDigestFile {
        key: digest_key,
        reason: e.to_string(),
    })
}

/// A small object beside the artifact (its `.sha256` or `.minisig`), at most `max` bytes, read
/// within `timeout` (the download timeout: an object that trickles in a byte at a time must not
/// hold the agent for longer than the tarball may).
async fn get_small_within<S: ArtifactStore>(
    store: &S,
    key: &str,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    match tokio::time::timeout(timeout, store::get_small(store, key, max)).await {
        Ok(read) => Ok(read?),
        Err(_) => Err(FetchError::Timeout {
            key: key.to_owned(),
            seconds: timeout.as_secs(),
        }),
    }
}

/// The signature an artifact must carry (`[artifact] trusted_keys`), read from `{key}.minisig`
/// within `timeout` and checked for a trusted key before anything is downloaded. A missing or
/// malformed signature, or one by an unknown key, rejects the artifact.
pub async fn expected_signature<S: ArtifactStore>(
    store: &S,
    key: &str,
    keys: &[PublicKey],
    timeout: Duration,
) -> Result<Signature, FetchError> {
    let sig_key = format!("{key}.minisig");
    let rejected = |source| FetchError::Signature {
        key: sig_key.clone(),
        source,
    };
    let read = get_small_within(
        store,
        &sig_key,
        crate::signature::MAX_SIGNATURE_FILE,
        timeout,
    )
    .await;
    let bytes = match read {
        Err(FetchError::Store(StoreError::NotFound { .. })) => {
            return Err(rejected(SignatureError::Malformed(
                "not found: the artifact is not signed".into(),
            )))
        }
        other => other?,
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| rejected(SignatureError::Malformed("not text".into())))?;
    let signature = Signature::parse(&text).map_err(rejected)?;
    signature.signer(keys).map_err(rejected)?;
    Ok(signature)
}

/// What a download produced.
#[derive(Clone, Copy, Debug)]
pub struct Downloaded {
    pub len: u64,
    /// The BLAKE2b-512 digest, when a prehashed signature asked for it.
    pub prehash: Option<[u8; 64]>,
    /// Bytes an earlier, interrupted download had fetched, kept rather than fetched again.
    pub resumed: u64,
}

/// How an artifact is fetched: what it must be, and over how many connections.
#[derive(Clone, Copy, Debug)]
pub struct Transfer<'a> {
    pub key: &'a str,
    pub expected: Sha256Digest,
    pub max_size: u64,
    /// The whole download, first byte to last digest.
    pub timeout: Duration,
    /// Also compute the BLAKE2b-512 digest a prehashed signature covers, in the same pass.
    pub prehash: bool,
    pub connections: usize,
    pub part_size: u64,
}

/// Downloads the object `info` describes into `partial.data`, at most `max_size` bytes and
/// within the timeout, and checks the digest as the last byte arrives. An object larger than
/// one part is fetched in parts ([`parallel`]) and resumes an earlier download of the same
/// object; a smaller one takes one GET. On a transient error the partial download is kept for
/// the next pass; when the bytes are wrong it is removed.
pub async fn download<S: ArtifactStore>(
    store: &S,
    transfer: &Transfer<'_>,
    info: &ObjectInfo,
    partial: &Partial,
) -> Result<Downloaded, FetchError> {
    let key = transfer.key;
    if info.len > transfer.max_size {
        return Err(FetchError::TooLarge {
            key: key.to_owned(),
            limit: transfer.max_size,
        });
    }
    let fetched = async {
        if info.len <= transfer.part_size {
            parallel::forget(partial);
            return stream_to_file(
                store,
                key,
                &partial.data,
                transfer.max_size,
                transfer.prehash,
            )
            .await;
        }
        let job = Parted {
            key,
            info,
            expected: transfer.expected,
            part_size: transfer.part_size,
            connections: transfer.connections,
            prehash: transfer.prehash,
        };
        parallel::download(store, &job, partial).await
    };
    let expected = transfer.expected;
    match tokio::time::timeout(transfer.timeout, fetched).await {
        Err(_) => Err(FetchError::Timeout {
            key: key.to_owned(),
            seconds: transfer.timeout.as_secs(),
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok((actual, downloaded))) if actual == expected => Ok(downloaded),
        Ok(Ok((actual, downloaded))) => {
            parallel::forget(partial);
            let key = key.to_owned();
            Err(match downloaded.resumed {
                0 => FetchError::Mismatch {
                    key,
                    expected,
                    actual,
                },
                _ => FetchError::ResumedMismatch {
                    key,
                    expected,
                    actual,
                },
            })
        }
    }
}

/// Checks `signature` over the downloaded artifact `file` (the key and version `binding` names),
/// by one of `keys`. Returns the id of the key that signed it.
pub fn verify_signature(
    signature: &Signature,
    keys: &[PublicKey],
    binding: &Binding,
    file: &Path,
    downloaded: &Downloaded,
) -> Result<String, FetchError> {
    let rejected = |source| FetchError::Signature {
        key: binding.key.clone(),
        source,
    };
    let signer = match downloaded.prehash {
        Some(digest) => signature.verify(keys, &digest, binding),
        None => {
            if downloaded.len > crate::signature::MAX_LEGACY_SIZE {
                return Err(rejected(SignatureError::LegacyTooLarge {
                    size: downloaded.len,
                }));
            }
            let whole = std::fs::read(file).at("read", file)?;
            signature.verify(keys, &whole, binding)
        }
    };
    signer.map(PublicKey::id_hex).map_err(rejected)
}

async fn stream_to_file<S: ArtifactStore>(
    store: &S,
    key: &str,
    dest: &Path,
    max_size: u64,
    prehash: bool,
) -> Result<(Sha256Digest, Downloaded), FetchError> {
    let too_large = || FetchError::TooLarge {
        key: key.to_owned(),
        limit: max_size,
    };
    let mut body = store.get(key).await?;
    if body.announced_len().is_some_and(|len| len > max_size) {
        return Err(too_large());
    }
    // Plain blocking writes: they go to the page cache, and this task is the only one with work
    // to do while a download runs.
    let file = parallel::open_download(dest, true)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut digests = Digests::new(prehash);
    let mut len = 0u64;
    while let Some(chunk) = body.next_chunk().await? {
        len += chunk.len() as u64;
        if len > max_size {
            return Err(too_large());
        }
        digests.update(&chunk);
        out.write_all(&chunk).at("write", dest)?;
    }
    out.flush().at("write", dest)?;
    Ok(digests.done(len, 0))
}

/// The digests an artifact is checked by, in one pass over its bytes: SHA-256 always, and the
/// BLAKE2b-512 a prehashed signature covers when asked for.
pub struct Digests {
    sha256: Hasher,
    prehash: Option<Prehash>,
}

impl Digests {
    pub fn new(prehash: bool) -> Self {
        Self {
            sha256: Hasher::default(),
            prehash: prehash.then(Prehash::default),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(p) = self.prehash.as_mut() {
            p.update(bytes);
        }
    }

    pub fn finish(self) -> (Sha256Digest, Option<[u8; 64]>) {
        (self.sha256.finish(), self.prehash.map(Prehash::finish))
    }

    /// The SHA-256 of the `len` bytes downloaded, of which `resumed` were kept from before.
    pub fn done(self, len: u64, resumed: u64) -> (Sha256Digest, Downloaded) {
        let (sha256, prehash) = self.finish();
        let downloaded = Downloaded {
            len,
            prehash,
            resumed,
        };
        (sha256, downloaded)
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
}
