//! Elastic Load Balancing (v2) for `[loadbalancer]`: the five calls [`LoadBalancer`] makes.

use std::time::Duration;

use aws_sdk_elasticloadbalancingv2::config::http::HttpResponse;
use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;

use super::describe;
use crate::balancer::{BalancerError, Group, LoadBalancer, Target, TargetState};

/// Elastic Load Balancing (v2) behind [`LoadBalancer`], for `[loadbalancer]`. The client is
/// made at the first call: an idle daemon never makes one (less memory while it polls).
pub struct Elb {
    sdk: aws_config::SdkConfig,
    made: std::cell::OnceCell<aws_sdk_elasticloadbalancingv2::Client>,
}

impl Elb {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Elb {
            sdk: sdk.clone(),
            made: std::cell::OnceCell::new(),
        }
    }

    fn client(&self) -> &aws_sdk_elasticloadbalancingv2::Client {
        (self.made).get_or_init(|| aws_sdk_elasticloadbalancingv2::Client::new(&self.sdk))
    }

    fn described(target: &Target) -> TargetDescription {
        TargetDescription::builder()
            .id(&target.id)
            .set_port(target.port.map(i32::from))
            .build()
    }
}

fn elb_error<E>(group: &str, call: &str, err: SdkError<E, HttpResponse>) -> BalancerError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    BalancerError::Api {
        group: group.to_owned(),
        message: format!("{call}: {}", describe(&err)),
    }
}

impl LoadBalancer for Elb {
    async fn describe(&self, group: &str) -> Result<Group, BalancerError> {
        let groups = (self.client().describe_target_groups())
            .target_group_arns(group)
            .send()
            .await
            .map_err(|e| elb_error(group, "DescribeTargetGroups", e))?;
        let found = groups.target_groups().first();
        let seconds =
            |v: Option<i32>, default: u64| v.and_then(|v| u64::try_from(v).ok()).unwrap_or(default);
        let attributes = (self.client().describe_target_group_attributes())
            .target_group_arn(group)
            .send()
            .await
            .map_err(|e| elb_error(group, "DescribeTargetGroupAttributes", e))?;
        let delay = (attributes.attributes().iter())
            .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value()?.parse().ok())
            // The API's default.
            .unwrap_or(300);
        Ok(Group {
            deregistration_delay: Duration::from_secs(delay),
            health_interval: Duration::from_secs(seconds(
                found.and_then(|g| g.health_check_interval_seconds()),
                30,
            )),
            healthy_threshold: seconds(found.and_then(|g| g.healthy_threshold_count()), 5) as u32,
        })
    }

    async fn state(&self, group: &str, target: &Target) -> Result<TargetState, BalancerError> {
        let health = (self.client().describe_target_health())
            .target_group_arn(group)
            .targets(Self::described(target))
            .send()
            .await
            .map_err(|e| elb_error(group, "DescribeTargetHealth", e))?;
        let state = (health.target_health_descriptions().iter())
            .find(|d| d.target().and_then(|t| t.id()) == Some(target.id.as_str()))
            .and_then(|d| d.target_health()?.state().map(|s| s.as_str().to_owned()));
        Ok(state.map_or(TargetState::Unused, |s| TargetState::parse(&s)))
    }

    async fn deregister(&self, group: &str, target: &Target) -> Result<(), BalancerError> {
        (self.client().deregister_targets())
            .target_group_arn(group)
            .targets(Self::described(target))
            .send()
            .await
            .map_err(|e| elb_error(group, "DeregisterTargets", e))?;
        Ok(())
    }

    async fn register(&self, group: &str, target: &Target) -> Result<(), BalancerError> {
        (self.client().register_targets())
            .target_group_arn(group)
            .targets(Self::described(target))
            .send()
            .await
            .map_err(|e| elb_error(group, "RegisterTargets", e))?;
        Ok(())
    }
}
