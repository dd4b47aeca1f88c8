//! The real AWS clients behind the [`DesiredSource`] and [`crate::store::ArtifactStore`] traits, and
//! [`crate::balancer::LoadBalancer`] (`elb.rs`): SSM for the parameter, S3 for artifacts (`s3.rs`),
//! Elastic Load Balancing for the target groups, plus the few calls the operator commands make.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::Aws as AwsConfig;
use crate::source::{DesiredSource, Parameter, SourceError};

mod elb;
mod s3;
mod scaling;
pub use elb::Elb;
pub use s3::{s3_client, S3Body, S3Store};
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
