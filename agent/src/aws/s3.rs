//! S3 behind [`ArtifactStore`]: artifacts whole or by byte range, `HeadObject`, the small
//! status and lease objects (conditional writes), listings, and the uploads `drover publish`
//! makes.

use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;

use super::{causes, classify, describe, Kind, Place};
use crate::config::Aws as AwsConfig;
use crate::store::{ArtifactStore, Condition, ObjectBody, ObjectInfo, StoreError, Tagged};

pub fn s3_client(sdk: &aws_config::SdkConfig, cfg: &AwsConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(sdk)
        // Emulators answer on one host; virtual-hosted buckets need DNS they do not have.
        .force_path_style(cfg.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// The IAM actions of the calls, named in their errors.
const GET: &str = "s3:GetObject";
const PUT: &str = "s3:PutObject";
const LIST: &str = "s3:ListBucket";

/// Cheap to clone: the client is shared.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    place: Place,
    /// A body that sends nothing for this long counts as failed.
    stall_timeout: Duration,
}

impl S3Store {
    pub fn new(sdk: &aws_config::SdkConfig, cfg: &AwsConfig, bucket: &str) -> Self {
        Self {
            client: s3_client(sdk, cfg),
            bucket: bucket.to_owned(),
            place: Place::of(sdk, "s3"),
            stall_timeout: Duration::from_secs(60),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// `action` is the IAM action the call needs.
    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        action: &'static str,
        key: &str,
        err: aws_sdk_s3::error::SdkError<E>,
    ) -> StoreError {
        let (bucket, key) = (self.bucket.clone(), key.to_owned());
        let message = describe(&err);
        match classify(&err, &["NoSuchKey", "NotFound"], &self.place) {
            Kind::NotFound => StoreError::NotFound { bucket, key },
            Kind::NoBucket => StoreError::NoBucket {
                bucket,
                region: self.place.region(),
            },
            Kind::WrongRegion(expected) => StoreError::WrongRegion {
                bucket,
                region: self.place.region(),
                expected,
            },
            Kind::Throttled => StoreError::Throttled {
                bucket,
                key,
                message,
            },
            Kind::Denied => StoreError::Denied {
                bucket,
                key,
                action,
                message,
            },
            Kind::Reach(reach) => StoreError::Reach { bucket, key, reach },
            // Not returned by classify, which makes it a Reach.
            Kind::Other | Kind::BadCredentials => StoreError::Failed {
                bucket,
                key,
                message,
            },
        }
    }

    /// Whether the bucket is there, in this region, and readable with these credentials: a
    /// listing of at most one key under `prefix` (the release prefix, which the policies in
    /// packaging/iam allow to list). An object's `HeadObject` cannot tell a missing bucket from
    /// a missing object: both are a bare 404.
    pub async fn check_bucket(&self, prefix: &str) -> Result<(), StoreError> {
        (self.client.list_objects_v2())
            .bucket(&self.bucket)
            .prefix(prefix)
            .max_keys(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| match self.error(LIST, prefix, e) {
                StoreError::NotFound { bucket, .. } => StoreError::NoBucket {
                    bucket,
                    region: self.place.region(),
                },
                other => other,
            })
    }

    /// Whether an object exists (for `drover publish`, which never overwrites).
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match self.error(GET, key, e) {
                StoreError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Uploads an artifact, with the unpacked size it announces to instances' space check, only
    /// if nothing is at `key` yet (`If-None-Match: *`): two publishes of one version that both
    /// found it absent cannot leave one's tarball beside the other's digest.
    pub async fn put_file_new(
        &self,
        key: &str,
        path: &std::path::Path,
        unpacked_size: Option<u64>,
    ) -> Result<(), StoreError> {
        let body = ByteStream::from_path(path)
            .await
            .map_err(|e| StoreError::Failed {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                message: format!("{}: {e}", path.display()),
            })?;
        self.put(key, body, unpacked_size, true).await
    }

    /// A small object, only if nothing is at `key` yet (a release's digest and signature).
    pub async fn put_bytes_new(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put(key, ByteStream::from(bytes), None, true).await
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put(key, ByteStream::from(bytes), None, false).await
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        unpacked_size: Option<u64>,
        create_only: bool,
    ) -> Result<(), StoreError> {
        let metadata = unpacked_size.map(|n| (crate::store::UNPACKED_SIZE_METADATA, n.to_string()));
        let put = (self.client.put_object())
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .set_metadata(metadata.map(|(k, v)| [(k.to_owned(), v)].into()))
            .set_if_none_match(create_only.then(|| "*".to_owned()));
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if create_only && condition_failed(&e) => Err(StoreError::Exists {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
            }),
            Err(e) => Err(self.error(PUT, key, e)),
        }
    }
}

/// Whether a conditional write was refused for its condition: 412, or 409 when a write to the
/// same key raced it.
fn condition_failed<E: ProvideErrorMetadata>(e: &aws_sdk_s3::error::SdkError<E>) -> bool {
    let status = e.raw_response().map(|r| r.status().as_u16());
    matches!(status, Some(412 | 409))
        || matches!(
            e.code(),
            Some("PreconditionFailed" | "ConditionalRequestConflict")
        )
}

pub struct S3Body {
    stream: ByteStream,
    len: Option<u64>,
    /// The object's entity tag, for a conditional write after this read (lease slots).
    etag: Option<String>,
    bucket: String,
    key: String,
    stall_timeout: Duration,
}

impl ObjectBody for S3Body {
    fn announced_len(&self) -> Option<u64> {
        self.len
    }

    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, StoreError> {
        let failed = |message: String| StoreError::Failed {
            bucket: self.bucket.clone(),
            key: self.key.clone(),
            message,
        };
        match tokio::time::timeout(self.stall_timeout, self.stream.next()).await {
            Err(_) => Err(failed(format!(
                "no data for {} s",
                self.stall_timeout.as_secs()
            ))),
            Ok(None) => Ok(None),
            Ok(Some(Ok(bytes))) => Ok(Some(bytes)),
            Ok(Some(Err(e))) => Err(failed(causes(&e))),
        }
    }
}

impl ArtifactStore for S3Store {
    type Body = S3Body;

    async fn get(&self, key: &str) -> Result<S3Body, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(GET, key, e))?;
        Ok(S3Body {
            len: out.content_length().and_then(|l| u64::try_from(l).ok()),
            etag: out.e_tag().map(str::to_owned),
            stream: out.body,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            stall_timeout: self.stall_timeout,
        })
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        let out = match (self.client.head_object())
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return Err(match self.error(GET, key, e) {
                    // A bare 404 is a missing object or a missing bucket: a listing tells which
                    // (when it may list; else it stays a missing object).
                    not_found @ StoreError::NotFound { .. } => match self.check_bucket(key).await {
                        Err(no_bucket @ StoreError::NoBucket { .. }) => no_bucket,
                        _ => not_found,
                    },
                    other => other,
                });
            }
        };
        let failed = |message: &str| StoreError::Failed {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        let len = out.content_length().and_then(|l| u64::try_from(l).ok());
        Ok(ObjectInfo {
            len: len.ok_or_else(|| failed("HeadObject gave no Content-Length"))?,
            etag: out
                .e_tag()
                .ok_or_else(|| failed("HeadObject gave no ETag"))?
                .to_owned(),
            unpacked_size: out
                .metadata()
                .and_then(|m| m.get(crate::store::UNPACKED_SIZE_METADATA))
                .and_then(|v| v.trim().parse().ok()),
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        etag: &str,
    ) -> Result<S3Body, StoreError> {
        let out = (self.client.get_object())
            .bucket(&self.bucket)
            .key(key)
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .if_match(etag)
            .send()
            .await
            .map_err(|e| match e.raw_response().map(|r| r.status().as_u16()) {
                Some(412) => StoreError::Changed {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    etag: etag.to_owned(),
                },
                _ => self.error(GET, key, e),
            })?;
        let len = out.content_length().and_then(|l| u64::try_from(l).ok());
        if len != Some(range.end - range.start) {
            return Err(StoreError::Failed {
                bucket: self.bucket.clone(),
                key: key.to_owned(),
                message: format!(
                    "asked for bytes {}..{}, the answer announced {len:?} bytes",
                    range.start, range.end
                ),
            });
        }
        Ok(S3Body {
            len,
            etag: out.e_tag().map(str::to_owned),
            stream: out.body,
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            stall_timeout: self.stall_timeout,
        })
    }

    async fn put_small(&self, key: &str, body: Vec<u8>) -> Result<(), StoreError> {
        self.put_bytes(key, body).await
    }

    async fn get_tagged(&self, key: &str, max: usize) -> Result<Option<Tagged>, StoreError> {
        let body = match self.get(key).await {
            Ok(body) => body,
            Err(StoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let etag = body.etag.clone().unwrap_or_default();
        let body = crate::store::read_small(body, key, max).await?;
        Ok(Some(Tagged { body, etag }))
    }

    async fn put_if(
        &self,
        key: &str,
        body: Vec<u8>,
        condition: Condition,
    ) -> Result<Option<String>, StoreError> {
        let put = (self.client.put_object())
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body));
        let put = match condition {
            Condition::Absent => put.if_none_match("*"),
            Condition::Matches(etag) => put.if_match(etag),
        };
        match put.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if condition_failed(&e) => Ok(None),
            Err(e) => Err(self.error(PUT, key, e)),
        }
    }

    async fn list_keys(&self, prefix: &str, max: usize) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .max_keys(i32::try_from(max.min(1000)).unwrap_or(1000))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.error(LIST, prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = page.next_continuation_token().map(str::to_owned);
            if keys.len() >= max || token.is_none() {
                keys.truncate(max);
                return Ok(keys);
            }
        }
    }
}
