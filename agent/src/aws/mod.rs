//! The real AWS clients behind the [`DesiredSource`] and [`ArtifactStore`] traits, and
//! [`crate::balancer::LoadBalancer`] (`elb.rs`): SSM for the parameter, S3 for artifacts,
//! Elastic Load Balancing for the target groups, plus the few calls the operator commands make.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;

use crate::config::Aws as AwsConfig;
use crate::source::{DesiredSource, Parameter, SourceError};
use crate::store::{ArtifactStore, Condition, ObjectBody, ObjectInfo, StoreError, Tagged};

mod elb;
mod scaling;
pub use elb::Elb;
pub use scaling::Scaling;

/// Loads region and credentials from the default chain, with the config's overrides.
pub async fn sdk_config(cfg: &AwsConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build(),
    );
    // rustls on ring: see the workspace Cargo.toml.
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    loader = loader.http_client(https);
    if let Some(region) = &cfg.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

/// An IMDSv2 client, through aws-config's: quick to give up off EC2. `[aws]
/// metadata_endpoint_url` points it elsewhere (an emulator).
pub fn imds_client(
    sdk: &aws_config::SdkConfig,
    cfg: &AwsConfig,
) -> Result<aws_config::imds::Client, String> {
    let mut provider = aws_config::provider_config::ProviderConfig::empty();
    if let Some(http) = sdk.http_client() {
        provider = provider.with_http_client(http);
    }
    if let Some(sleep) = sdk.sleep_impl() {
        provider = provider.with_sleep_impl(sleep);
    }
    let mut builder = aws_config::imds::Client::builder()
        .configure(&provider)
        .max_attempts(2);
    if let Some(url) = &cfg.metadata_endpoint_url {
        builder = builder
            .endpoint(url)
            .map_err(|e| format!("aws.metadata_endpoint_url {url:?}: {e}"))?;
    }
    Ok(builder.build())
}

/// The instance id from IMDSv2 (`[fleet]`, rollouts, the load balancer and Auto Scaling).
pub fn imds_identity(
    sdk: &aws_config::SdkConfig,
    cfg: &AwsConfig,
) -> Result<crate::fleet::Identity, crate::fleet::IdentityError> {
    let client = imds_client(sdk, cfg).map_err(crate::fleet::IdentityError::Unreachable)?;
    Ok(identity_from(client))
}

/// [`imds_identity`] through a client made already (one per process is enough).
pub fn identity_from(client: aws_config::imds::Client) -> crate::fleet::Identity {
    use crate::fleet::IdentityError;
    crate::fleet::Identity::lookup(Box::new(move || {
        let client = client.clone();
        Box::pin(async move {
            let id = client.get("/latest/meta-data/instance-id").await;
            id.map(|id| id.as_ref().to_owned())
                .map_err(|e| IdentityError::Unreachable(causes(&e)))
        })
    }))
}

pub fn s3_client(sdk: &aws_config::SdkConfig, cfg: &AwsConfig) -> aws_sdk_s3::Client {
    let s3 = aws_sdk_s3::config::Builder::from(sdk)
        // Emulators answer on one host; virtual-hosted buckets need DNS they do not have.
        .force_path_style(cfg.endpoint_url.is_some())
        .build();
    aws_sdk_s3::Client::from_conf(s3)
}

/// One line for the journal about a failed call: the service's error code, message and HTTP
/// status for an error answer (`ThrottlingException: Rate exceeded (HTTP 400)`), the chain of
/// causes for a network or timeout failure. Not the SDK's debug form, which dumps the whole raw
/// response into `ERROR`.
fn describe<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let SdkError::ServiceError(service) = err {
        let status = service.raw().status().as_u16();
        return match (err.code(), err.message().filter(|m| !m.is_empty())) {
            (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
            (Some(code), None) => format!("{code} (HTTP {status})"),
            (None, _) => format!("HTTP {status}"),
        };
    }
    causes(err)
}

/// `error: cause: cause of the cause`, skipping a cause that its parent already quotes.
pub(crate) fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// Sorts an SDK error into the kinds the reconcile loop treats differently.
enum Kind {
    NotFound,
    Throttled,
    Denied,
    Other,
}

fn kind_of(code: Option<&str>, not_found: &[&str]) -> Kind {
    match code {
        Some(c) if not_found.contains(&c) => Kind::NotFound,
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "SlowDown"
            | "RequestLimitExceeded",
        ) => Kind::Throttled,
        Some(
            "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken",
        ) => Kind::Denied,
        _ => Kind::Other,
    }
}

pub struct SsmSource {
    client: aws_sdk_ssm::Client,
    name: String,
}

impl SsmSource {
    /// For the operator commands: the SDK retries throttling and transient errors (3 attempts).
    pub fn new(sdk: &aws_config::SdkConfig, name: &str) -> Self {
        Self {
            client: aws_sdk_ssm::Client::new(sdk),
            name: name.to_owned(),
        }
    }

    /// For the agent's polls: one request per call. A throttled or failed poll is retried by
    /// the poll loop with full jitter (`plan::Backoff`), so that each poll costs exactly one
    /// call of the account's Parameter Store quota.
    pub fn polling(sdk: &aws_config::SdkConfig, name: &str) -> Self {
        let once = sdk
            .to_builder()
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1))
            .build();
        Self::new(&once, name)
    }

    /// `drover promote`: what `aws ssm put-parameter --overwrite` does. Returns the new version.
    pub async fn put(&self, value: &str) -> Result<i64, SourceError> {
        self.client
            .put_parameter()
            .name(&self.name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .map(|out| out.version())
            .map_err(|e| self.error(e))
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        err: aws_sdk_ssm::error::SdkError<E>,
    ) -> SourceError {
        self.error_for(&self.name, err)
    }

    fn error_for<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        name: &str,
        err: aws_sdk_ssm::error::SdkError<E>,
    ) -> SourceError {
        let name = name.to_owned();
        let message = describe(&err);
        match kind_of(
            err.code(),
            &["ParameterNotFound", "ParameterVersionNotFound"],
        ) {
            Kind::NotFound => SourceError::NotFound { name },
            Kind::Throttled => SourceError::Throttled { name, message },
            Kind::Denied => SourceError::Denied { name, message },
            Kind::Other => SourceError::Failed { name, message },
        }
    }
}

impl DesiredSource for SsmSource {
    async fn read(&self) -> Result<Parameter, SourceError> {
        let out = self
            .client
            .get_parameter()
            .name(&self.name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        let p = out.parameter().ok_or_else(|| SourceError::Failed {
            name: self.name.clone(),
            message: "response has no parameter".into(),
        })?;
        Ok(Parameter {
            value: p.value().unwrap_or_default().to_owned(),
            version: p.version(),
            modified: p
                .last_modified_date()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
        })
    }

    async fn read_path(
        &self,
        path: &str,
    ) -> Result<Vec<crate::environment::PathParameter>, SourceError> {
        let mut pages = self
            .client
            .get_parameters_by_path()
            .path(path)
            .recursive(false)
            .with_decryption(true)
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error_for(path, e))?;
            for p in page.parameters() {
                found.push(crate::environment::PathParameter {
                    name: p.name().unwrap_or_default().to_owned(),
                    value: p.value().unwrap_or_default().to_owned(),
                    version: p.version(),
                });
            }
        }
        Ok(found)
    }
}

/// Cheap to clone: the client is shared.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    /// A body that sends nothing for this long counts as failed.
    stall_timeout: Duration,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, bucket: &str) -> Self {
        Self {
            client,
            bucket: bucket.to_owned(),
            stall_timeout: Duration::from_secs(60),
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn error<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        key: &str,
        err: aws_sdk_s3::error::SdkError<E>,
    ) -> StoreError {
        let (bucket, key) = (self.bucket.clone(), key.to_owned());
        let message = describe(&err);
        let status = err.raw_response().map(|r| r.status().as_u16());
        match (
            kind_of(err.code(), &["NoSuchKey", "NotFound", "NoSuchBucket"]),
            status,
        ) {
            (Kind::NotFound, _) | (_, Some(404)) => StoreError::NotFound { bucket, key },
            (Kind::Throttled, _) | (_, Some(503)) => StoreError::Throttled {
                bucket,
                key,
                message,
            },
            (Kind::Denied, _) | (_, Some(403)) => StoreError::Denied {
                bucket,
                key,
                message,
            },
            (Kind::Other, _) => StoreError::Failed {
                bucket,
                key,
                message,
            },
        }
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
            Err(e) => match self.error(key, e) {
                StoreError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    /// Uploads an artifact, with the unpacked size it announces to instances' space check.
    pub async fn put_file(
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
        self.put(key, body, unpacked_size).await
    }

    pub async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.put(key, ByteStream::from(bytes), None).await
    }

    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        unpacked_size: Option<u64>,
    ) -> Result<(), StoreError> {
        let metadata = unpacked_size.map(|n| (crate::store::UNPACKED_SIZE_METADATA, n.to_string()));
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(body)
            .set_metadata(metadata.map(|(k, v)| [(k.to_owned(), v)].into()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error(key, e))
    }
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
            .map_err(|e| self.error(key, e))?;
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
        let out = (self.client.head_object())
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error(key, e))?;
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
                _ => self.error(key, e),
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
            Err(e) => {
                // 412: the condition failed; 409: a write to the same key raced this one.
                let status = e.raw_response().map(|r| r.status().as_u16());
                match (status, e.code()) {
                    (Some(412 | 409), _)
                    | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => Ok(None),
                    _ => Err(self.error(key, e)),
                }
            }
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
                .map_err(|e| self.error(prefix, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::primitives::SdkBody;
    use aws_sdk_ssm::operation::get_parameter::GetParameterError;

    fn answer(status: u16, code: Option<&str>, message: &str) -> SdkError<GetParameterError> {
        let mut meta = ErrorMetadata::builder().message(message);
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(
            status
                .try_into()
                .unwrap_or_else(|_| panic!("status {status}")),
            SdkBody::from("{\"__type\":\"with a body that must not be quoted\"}"),
        );
        SdkError::service_error(GetParameterError::generic(meta.build()), raw)
    }

    #[test]
    fn service_errors_are_one_short_line_with_code_message_and_status() {
        assert_eq!(
            describe(&answer(400, Some("ThrottlingException"), "Rate exceeded")),
            "ThrottlingException: Rate exceeded (HTTP 400)"
        );
        assert_eq!(
            describe(&answer(403, Some("AccessDenied"), "")),
            "AccessDenied (HTTP 403)"
        );
        assert_eq!(describe(&answer(404, None, "")), "HTTP 404");
    }

    #[test]
    fn other_errors_are_their_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset");
        let err: SdkError<GetParameterError> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(io)));
        let text = describe(&err);
        assert!(text.starts_with("dispatch failure"), "{text}");
        assert!(text.contains("connection reset"), "{text}");
        assert!(!text.contains("ConnectorError {"), "no debug form: {text}");
    }
}
