//! Where artifacts come from: objects read by key, streamed chunk by chunk, whole or by byte
//! range.

use std::future::Future;
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("s3://{bucket}/{key} not found")]
    NotFound { bucket: String, key: String },
    /// The bucket itself is missing (`NoSuchBucket`), not an object in it.
    #[error("bucket {bucket} does not exist (looked for in {region})")]
    NoBucket { bucket: String, region: String },
    /// S3 says the bucket is in another region than the client's (`expected`, when it says
    /// which).
    #[error("bucket {bucket} is not in {region}{}", expected.as_deref().map(|e| format!(" but in {e}")).unwrap_or_default())]
    WrongRegion {
        bucket: String,
        region: String,
        expected: Option<String>,
    },
    #[error("reading s3://{bucket}/{key} was throttled: {message}")]
    Throttled {
        bucket: String,
        key: String,
        message: String,
    },
    /// `action` is the IAM action refused (`s3:GetObject`).
    #[error("access denied: {action} on s3://{bucket}/{key}: {message}")]
    Denied {
        bucket: String,
        key: String,
        action: &'static str,
        message: String,
    },
    #[error("s3://{bucket}/{key}: {reach}")]
    Reach {
        bucket: String,
        key: String,
        reach: crate::reach::Reach,
    },
    /// A write that creates only found an object at the key already.
    #[error("s3://{bucket}/{key} already exists")]
    Exists { bucket: String, key: String },
    /// A read pinned to an entity tag (`If-Match`) found another object at the key: it was
    /// replaced since the download began.
    #[error("s3://{bucket}/{key} was replaced during the download (its ETag is no longer {etag})")]
    Changed {
        bucket: String,
        key: String,
        etag: String,
    },
    #[error("reading s3://{bucket}/{key} failed: {message}")]
    Failed {
        bucket: String,
        key: String,
        message: String,
    },
}

impl crate::reach::Fix for StoreError {
    fn fix(&self) -> Option<String> {
        match self {
            StoreError::NoBucket { .. } => Some(
                "check [artifact] bucket (--bucket) and [aws] region (--region); a new account \
                 needs the bucket created first"
                    .into(),
            ),
            StoreError::WrongRegion {
                expected: Some(region),
                ..
            } => Some(format!(
                "set [aws] region = \"{region}\" (or --region {region})"
            )),
            StoreError::WrongRegion { .. } => Some(
                "set [aws] region (or --region) to the bucket's region: `aws s3api \
                 get-bucket-location` names it"
                    .into(),
            ),
            // Listing is allowed on the bucket, for a prefix; reading, on the object.
            StoreError::Denied {
                bucket,
                key,
                action: action @ "s3:ListBucket",
                ..
            } => Some(format!(
                "allow {action} on arn:aws:s3:::{bucket} with the condition s3:prefix = \
                 \"{key}*\" to the role or user drover runs as (docs/IAM.md)"
            )),
            StoreError::Denied {
                bucket,
                key,
                action,
                ..
            } => Some(format!(
                "allow {action} on arn:aws:s3:::{bucket}/{key} to the role or user drover runs \
                 as (docs/IAM.md)"
            )),
            StoreError::Reach { reach, .. } => Some(reach.fix()),
            StoreError::NotFound { .. }
            | StoreError::Exists { .. }
            | StoreError::Throttled { .. }
            | StoreError::Changed { .. }
            | StoreError::Failed { .. } => None,
        }
    }
}

/// An object body being received.
pub trait ObjectBody {
    /// The length the server announced, if it did.
    fn announced_len(&self) -> Option<u64>;
    /// The next chunk, or `None` at the end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<bytes::Bytes>, StoreError>>;
}

/// When a conditional write may happen (S3's `If-None-Match: *` and `If-Match`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Only if there is no object at the key.
    Absent,
    /// Only if the object there still has this entity tag.
    Matches(String),
}

/// A small object with its entity tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tagged {
    pub body: Vec<u8>,
    pub etag: String,
}

/// What a `HeadObject` says of an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub len: u64,
    pub etag: String,
    /// The unpacked size `drover publish` announces in the object's metadata
    /// (`x-amz-meta-unpacked-size`), for the space check; `None` when absent or unreadable.
    pub unpacked_size: Option<u64>,
}

/// The user metadata key (`x-amz-meta-...`) under which `drover publish` announces the sum of
/// the archive's file sizes.
pub const UNPACKED_SIZE_METADATA: &str = "unpacked-size";

pub trait ArtifactStore {
    type Body: ObjectBody;

    /// Starts reading the object at `key` in the configured bucket.
    fn get(&self, key: &str) -> impl Future<Output = Result<Self::Body, StoreError>>;

    /// The size, entity tag and announced unpacked size of the object at `key`.
    fn head(&self, key: &str) -> impl Future<Output = Result<ObjectInfo, StoreError>>;

    /// Starts reading bytes `range` of the object at `key`, only while it still has the entity
    /// tag `etag` ([`StoreError::Changed`] otherwise).
    fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: &str,
    ) -> impl Future<Output = Result<Self::Body, StoreError>>;

    /// Writes (or replaces) a small object: the instances' status objects (`[fleet]`).
    fn put_small(&self, key: &str, body: Vec<u8>) -> impl Future<Output = Result<(), StoreError>>;

    /// Reads a small object (at most `max` bytes) with its entity tag; `None` when there is
    /// none.
    fn get_tagged(
        &self,
        key: &str,
        max: usize,
    ) -> impl Future<Output = Result<Option<Tagged>, StoreError>>;

    /// Writes a small object if `condition` holds, atomically: the new entity tag, or `None`
    /// when the condition did not hold (someone else wrote first).
    fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Condition,
    ) -> impl Future<Output = Result<Option<String>, StoreError>>;

    /// Up to `max` keys under `prefix`, in key order.
    fn list_keys(
        &self,
        prefix: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>>;
}

/// Reads a small object whole, refusing more than `max` bytes.
pub async fn get_small<S: ArtifactStore>(
    store: &S,
    key: &str,
    max: usize,
) -> Result<Vec<u8>, StoreError> {
    read_small(store.get(key).await?, key, max).await
}

/// The rest of `body` (of the object at `key`), refusing more than `max` bytes.
pub async fn read_small<B: ObjectBody>(
    mut body: B,
    key: &str,
    max: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.next_chunk().await? {
        out.extend_from_slice(&chunk);
        if out.len() > max {
            return Err(StoreError::Failed {
                bucket: String::new(),
                key: key.to_owned(),
                message: format!("object is larger than {max} bytes"),
            });
        }
    }
    Ok(out)
}
