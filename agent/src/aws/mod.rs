//! The real AWS clients behind the [`DesiredSource`] and [`crate::store::ArtifactStore`] traits, and
//! [`crate::balancer::LoadBalancer`] (`elb.rs`): SSM for the parameter, S3 for artifacts (`s3.rs`),
//! Elastic Load Balancing for the target groups, plus the few calls the operator commands make.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::config::Aws as AwsConfig;
use crate::reach::Reach;
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

/// Where a client sends its calls, for the messages of its errors: the region, and the
/// endpoint (`[aws] endpoint_url`, else the service's regional one).
#[derive(Clone, Debug)]
pub(crate) struct Place {
    region: Option<String>,
    endpoint: String,
}

impl Place {
    pub(crate) fn of(sdk: &aws_config::SdkConfig, service: &str) -> Place {
        let region = sdk.region().map(|r| r.to_string());
        let endpoint = match (sdk.endpoint_url(), &region) {
            (Some(url), _) => url.to_owned(),
            (None, Some(region)) => format!("https://{service}.{region}.amazonaws.com"),
            (None, None) => format!("{service} (no region, so no endpoint)"),
        };
        Place { region, endpoint }
    }

    pub(crate) fn region(&self) -> String {
        self.region.clone().unwrap_or_else(|| "no region".into())
    }
}

/// Sorts an SDK error into the kinds that are told apart: the reconcile loop treats them
/// differently, and an operator fixes each in another place.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    NotFound,
    NoBucket,
    /// The bucket is in another region (the one S3 names, when it does).
    WrongRegion(Option<String>),
    Throttled,
    Denied,
    /// The credentials themselves were refused.
    BadCredentials,
    Reach(Reach),
    Other,
}

fn classify<E>(err: &SdkError<E, HttpResponse>, not_found: &[&str], place: &Place) -> Kind
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(tried) = credentials_failure(err) {
        return Kind::Reach(Reach::NoCredentials { tried });
    }
    match err {
        SdkError::ServiceError(service) => {
            let raw = service.raw();
            let header = raw.headers().get("x-amz-bucket-region").map(str::to_owned);
            let status = raw.status().as_u16();
            match kind_of(err.code(), status, err.message(), header, not_found) {
                Kind::BadCredentials => Kind::Reach(Reach::BadCredentials {
                    message: describe(err),
                }),
                kind => kind,
            }
        }
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            Kind::Reach(Reach::Unreachable {
                endpoint: place.endpoint.clone(),
                cause: causes(err)
                    .trim_start_matches("dispatch failure: ")
                    .to_owned(),
            })
        }
        SdkError::TimeoutError(_) => Kind::Reach(Reach::Unreachable {
            endpoint: place.endpoint.clone(),
            cause: "no answer in time".into(),
        }),
        SdkError::ConstructionFailure(_) if place.region.is_none() => Kind::Reach(Reach::NoRegion),
        _ => Kind::Other,
    }
}

/// The kind of an error answer: its code, HTTP status, message and `x-amz-bucket-region`.
fn kind_of(
    code: Option<&str>,
    status: u16,
    message: Option<&str>,
    bucket_region: Option<String>,
    not_found: &[&str],
) -> Kind {
    match code {
        Some("NoSuchBucket") => Kind::NoBucket,
        Some(c) if not_found.contains(&c) => Kind::NotFound,
        // S3 answers a request signed for the wrong region with a redirect (301, with the
        // bucket's region in a header) or, from a regional endpoint, with
        // AuthorizationHeaderMalformed "the region 'x' is wrong; expecting 'y'".
        Some(
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
        ) => Kind::WrongRegion(bucket_region.or_else(|| expecting(message))),
        _ if status == 301 => Kind::WrongRegion(bucket_region),
        Some(
            "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "SlowDown"
            | "RequestLimitExceeded",
        ) => Kind::Throttled,
        Some("AccessDenied" | "AccessDeniedException") => Kind::Denied,
        Some(
            "UnrecognizedClientException"
            | "InvalidAccessKeyId"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "ExpiredTokenException",
        ) => Kind::BadCredentials,
        _ if status == 404 => Kind::NotFound,
        _ if status == 503 => Kind::Throttled,
        _ if status == 403 => Kind::Denied,
        _ => Kind::Other,
    }
}

/// The region in "...; expecting 'eu-west-1'".
fn expecting(message: Option<&str>) -> Option<String> {
    let rest = message?.split("expecting '").nth(1)?;
    Some(rest.split('\'').next()?.to_owned())
}

/// The credential chain's report, on one line, when the call failed for want of credentials.
fn credentials_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use aws_credential_types::provider::error::CredentialsError;
    let mut source = Some(err);
    while let Some(e) = source {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return Some(crate::reach::credential_chain_line(&causes(e)));
        }
        source = e.source();
    }
    None
}

pub struct SsmSource {
    client: aws_sdk_ssm::Client,
    name: String,
    place: Place,
}

impl SsmSource {
    /// For the operator commands: the SDK retries throttling and transient errors (3 attempts).
    pub fn new(sdk: &aws_config::SdkConfig, name: &str) -> Self {
        Self {
            client: aws_sdk_ssm::Client::new(sdk),
            name: name.to_owned(),
            place: Place::of(sdk, "ssm"),
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
            .map_err(|e| self.error_for(&self.name, WRITE, e))
    }

    fn error_for<E: ProvideErrorMetadata + std::error::Error + 'static>(
        &self,
        name: &str,
        (verb, action): (&'static str, &'static str),
        err: aws_sdk_ssm::error::SdkError<E>,
    ) -> SourceError {
        let name = name.to_owned();
        let message = describe(&err);
        let not_found = ["ParameterNotFound", "ParameterVersionNotFound"];
        match classify(&err, &not_found, &self.place) {
            Kind::NotFound => SourceError::NotFound {
                name,
                region: self.place.region(),
            },
            Kind::Throttled => SourceError::Throttled {
                name,
                verb,
                message,
            },
            Kind::Denied => SourceError::Denied {
                name,
                action,
                message,
            },
            Kind::Reach(reach) => SourceError::Reach { name, verb, reach },
            Kind::NoBucket | Kind::WrongRegion(_) | Kind::BadCredentials | Kind::Other => {
                SourceError::Failed {
                    name,
                    verb,
                    message,
                }
            }
        }
    }
}

/// What a call does, for its errors: the verb, and the IAM action it needs.
const READ: (&str, &str) = ("reading", "ssm:GetParameter");
const READ_PATH: (&str, &str) = ("reading", "ssm:GetParametersByPath");
const WRITE: (&str, &str) = ("writing", "ssm:PutParameter");

impl DesiredSource for SsmSource {
    async fn read(&self) -> Result<Parameter, SourceError> {
        let out = self
            .client
            .get_parameter()
            .name(&self.name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| self.error_for(&self.name, READ, e))?;
        let p = out.parameter().ok_or_else(|| SourceError::Failed {
            name: self.name.clone(),
            verb: READ.0,
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
            let page = page.map_err(|e| self.error_for(path, READ_PATH, e))?;
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
    fn a_missing_bucket_a_wrong_region_and_a_refusal_are_told_apart() {
        let nf = &["NoSuchKey", "NotFound"];
        assert_eq!(
            kind_of(Some("NoSuchBucket"), 404, None, None, nf),
            Kind::NoBucket
        );
        assert_eq!(
            kind_of(Some("NoSuchKey"), 404, None, None, nf),
            Kind::NotFound
        );
        // HeadObject and HeadBucket answers have no body, so no code.
        assert_eq!(kind_of(None, 404, None, None, nf), Kind::NotFound);
        assert_eq!(
            kind_of(None, 301, None, Some("eu-west-1".into()), nf),
            Kind::WrongRegion(Some("eu-west-1".into()))
        );
        assert_eq!(
            kind_of(
                Some("AuthorizationHeaderMalformed"),
                400,
                Some("The authorization header is malformed; the region 'us-east-1' is wrong; expecting 'eu-central-1'"),
                None,
                nf
            ),
            Kind::WrongRegion(Some("eu-central-1".into()))
        );
        assert_eq!(kind_of(None, 403, None, None, nf), Kind::Denied);
        assert_eq!(
            kind_of(Some("AccessDeniedException"), 400, None, None, nf),
            Kind::Denied
        );
        assert_eq!(
            kind_of(Some("SlowDown"), 503, None, None, nf),
            Kind::Throttled
        );
        assert_eq!(
            kind_of(Some("ExpiredToken"), 400, None, None, nf),
            Kind::BadCredentials
        );
        assert_eq!(
            kind_of(Some("InternalError"), 500, None, None, nf),
            Kind::Other
        );
    }

    #[test]
    fn a_refused_connection_names_the_endpoint() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err: SdkError<GetParameterError> =
            SdkError::dispatch_failure(aws_sdk_s3::error::ConnectorError::io(Box::new(io)));
        let place = Place {
            region: Some("eu-west-1".into()),
            endpoint: "https://ssm.eu-west-1.amazonaws.com".into(),
        };
        match classify(&err, &[], &place) {
            Kind::Reach(Reach::Unreachable { endpoint, cause }) => {
                assert_eq!(endpoint, "https://ssm.eu-west-1.amazonaws.com");
                assert!(cause.contains("connection refused"), "{cause}");
            }
            other => panic!("{other:?}"),
        }
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
