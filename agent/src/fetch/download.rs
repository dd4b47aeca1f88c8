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
pub(crate) mod tests;
