//! Auto Scaling for `[autoscaling]`: the target lifecycle state and the group from IMDS, and
//! the four calls of the API [`AutoScaling`] makes.

use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use aws_sdk_autoscaling::config::http::HttpResponse;
use aws_sdk_autoscaling::error::{ProvideErrorMetadata, SdkError};

use super::{causes, describe};
use crate::lifecycle::{Action, AutoScaling, LifecycleError};

/// The Auto Scaling client is made at the first call: most passes only ask IMDS.
pub struct Scaling {
    imds: aws_config::imds::Client,
    sdk: aws_config::SdkConfig,
    made: std::cell::OnceCell<aws_sdk_autoscaling::Client>,
    /// `[autoscaling] group`, when the config names it.
    group: Option<String>,
}

impl Scaling {
    pub fn new(
        sdk: &aws_config::SdkConfig,
        imds: aws_config::imds::Client,
        group: Option<String>,
    ) -> Self {
        Scaling {
            imds,
            sdk: sdk.clone(),
            made: std::cell::OnceCell::new(),
            group,
        }
    }

    fn client(&self) -> &aws_sdk_autoscaling::Client {
        (self.made).get_or_init(|| aws_sdk_autoscaling::Client::new(&self.sdk))
    }

    /// A metadata path's text; `None` when IMDS says there is no such path (404).
    async fn metadata(&self, path: &str) -> Result<Option<String>, LifecycleError> {
        match self.imds.get(path).await {
            Ok(text) => Ok(Some(text.as_ref().trim().to_owned())),
            Err(ImdsError::ErrorResponse(e)) if e.response().status().as_u16() == 404 => Ok(None),
            Err(e) => Err(LifecycleError::Metadata(format!("{path}: {}", causes(&e)))),
        }
    }
}

fn api<E>(call: &str, err: SdkError<E, HttpResponse>) -> LifecycleError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    LifecycleError::Api(format!("{call}: {}", describe(&err)))
}

impl AutoScaling for Scaling {
    async fn target_state(&self) -> Result<Option<String>, LifecycleError> {
        self.metadata("/latest/meta-data/autoscaling/target-lifecycle-state")
            .await
    }

    async fn group(&self, instance: &str) -> Result<String, LifecycleError> {
        if let Some(group) = &self.group {
            return Ok(group.clone());
        }
        // Only when the instance's tags are in its metadata (off by default).
        let tag = "/latest/meta-data/tags/instance/aws:autoscaling:groupName";
        if let Ok(Some(group)) = self.metadata(tag).await {
            return Ok(group);
        }
        let found = (self.client().describe_auto_scaling_instances())
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| api("DescribeAutoScalingInstances", e))?;
        (found.auto_scaling_instances().first())
            .and_then(|i| i.auto_scaling_group_name())
            .map(str::to_owned)
            .ok_or_else(|| LifecycleError::NoGroup(format!("{instance} is in no group")))
    }

    async fn heartbeat_timeout(&self, group: &str, hook: &str) -> Result<Duration, LifecycleError> {
        let hooks = (self.client().describe_lifecycle_hooks())
            .auto_scaling_group_name(group)
            .lifecycle_hook_names(hook)
            .send()
            .await
            .map_err(|e| api("DescribeLifecycleHooks", e))?;
        let seconds = (hooks.lifecycle_hooks().first())
            .ok_or_else(|| {
                LifecycleError::Api(format!("group {group} has no lifecycle hook {hook}"))
            })?
            .heartbeat_timeout()
            // The API's default.
            .unwrap_or(3600);
        Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(3600)))
    }

    async fn complete(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
        action: Action,
    ) -> Result<(), LifecycleError> {
        (self.client().complete_lifecycle_action())
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .lifecycle_action_result(action.as_str())
            .send()
            .await
            .map_err(|e| api("CompleteLifecycleAction", e))?;
        Ok(())
    }

    async fn heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance: &str,
    ) -> Result<(), LifecycleError> {
        (self.client().record_lifecycle_action_heartbeat())
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance)
            .send()
            .await
            .map_err(|e| api("RecordLifecycleActionHeartbeat", e))?;
        Ok(())
    }
}
