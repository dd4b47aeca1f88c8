//! Why a call to AWS got no useful answer for reasons that are the caller's set-up, not the
//! object or parameter asked for: no credentials, no region, an endpoint that cannot be reached.
//! Shared by the errors of the artifact store and of the parameter source, which say what the
//! call was about; each says what to do about it ([`Reach::fix`]).

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reach {
    /// The SDK's credential chain found nothing; `tried` is what each source said, on one line.
    #[error("no AWS credentials were found (tried: {tried})")]
    NoCredentials { tried: String },
    /// Credentials were found and sent, and AWS refused them as such (expired, unknown, or
    /// signed wrong): not a question of what they may do.
    #[error("the AWS credentials were refused: {message}")]
    BadCredentials { message: String },
    #[error("no AWS region is set")]
    NoRegion,
    /// A connection, or an answer, never came.
    #[error("cannot reach {endpoint}: {cause}")]
    Unreachable { endpoint: String, cause: String },
}

impl Reach {
    pub fn fix(&self) -> String {
        match self {
            Reach::NoCredentials { .. } => "on EC2, attach an instance profile whose role has \
                drover's policy (docs/IAM.md); elsewhere set AWS_PROFILE, or AWS_ACCESS_KEY_ID \
                and AWS_SECRET_ACCESS_KEY"
                .into(),
            Reach::BadCredentials { .. } => "the credentials drover found are expired, unknown \
                or wrong: renew them (an instance profile's renew by themselves), check \
                AWS_PROFILE or AWS_ACCESS_KEY_ID, and that this machine's clock is right"
                .into(),
            Reach::NoRegion => "set [aws] region in the config (or --region, or AWS_REGION); on \
                EC2 the instance metadata service gives it"
                .into(),
            Reach::Unreachable { .. } => "check the endpoint ([aws] endpoint_url or \
                --endpoint-url; when unset it follows the region), the region, and this \
                machine's way to it (DNS, proxy, security group, VPC endpoint)"
                .into(),
        }
    }
}

/// An error that knows what the operator should do about it.
pub trait Fix: std::fmt::Display {
    fn fix(&self) -> Option<String>;

    /// The error and its fix, on one line: for the journal and the command line.
    fn explained(&self) -> String {
        match self.fix() {
            Some(fix) => format!("{self}; fix: {fix}"),
            None => self.to_string(),
        }
    }
}

/// The sources of the SDK's default credential chain, each with what it said, on one line:
/// the chain's own report is one line per source.
pub fn credential_chain_line(report: &str) -> String {
    let not_enabled = "the credential provider was not enabled";
    match report.split_once("Attempted:") {
        Some((_, tried)) => tried
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.replace(&format!("{not_enabled}: "), "")
                    .replace(not_enabled, "not configured")
            })
            .collect::<Vec<_>>()
            .join("; "),
        // A source that failed outright ends the chain with its own error: the instance
        // metadata service, last in the chain, in practice.
        None => format!(
            "environment, profile, web identity token and ECS container had none; \
             the last source said: {}",
            report.lines().map(str::trim).collect::<Vec<_>>().join(" ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_s_report_becomes_one_line() {
        let report = "dispatch failure: other: the credential provider was not enabled: no \
            credentials found in chain. Attempted:\n  Environment: the credential provider was \
            not enabled: environment variable not set\n  Profile: the credential provider was \
            not enabled\n  Ec2InstanceMetadata: the credential provider was not enabled: IMDS \
            disabled by AWS_EC2_METADATA_DISABLED env var set to `true`";
        assert_eq!(
            credential_chain_line(report),
            "Environment: environment variable not set; Profile: not configured; \
             Ec2InstanceMetadata: IMDS disabled by AWS_EC2_METADATA_DISABLED env var set to `true`"
        );
        let imds = credential_chain_line("failed to load IMDS session token:\n forbidden");
        assert!(
            imds.ends_with("said: failed to load IMDS session token: forbidden"),
            "{imds}"
        );
    }

    #[test]
    fn explained_adds_the_fix() {
        let reach = Reach::Unreachable {
            endpoint: "http://127.0.0.1:9".into(),
            cause: "connection refused".into(),
        };
        struct E(Reach);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "writing parameter /a: {}", self.0)
            }
        }
        impl Fix for E {
            fn fix(&self) -> Option<String> {
                Some(self.0.fix())
            }
        }
        let text = E(reach).explained();
        assert!(
            text.starts_with("writing parameter /a: cannot reach http://127.0.0.1:9: connection refused; fix: check the endpoint"),
            "{text}"
        );
    }
}
