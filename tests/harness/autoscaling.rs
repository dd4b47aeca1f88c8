//! The two Auto Scaling calls moto lacks, played in front of it (a fault proxy [`Front`]) as
//! AWS documents them: `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`, by
//! instance id. A test says which lifecycle actions are pending ([`Lifecycle::hold`]), as Auto
//! Scaling does when it puts an instance in `Pending:Wait` or `Terminating:Wait`; a call for an
//! instance with no pending action is refused with AWS's `ValidationError`. Every call is
//! recorded. Everything else (`PutLifecycleHook`, `DescribeLifecycleHooks`, ...) goes to moto.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::faultproxy::{Answer, Front, Request};

/// A call the front answered.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub action: String,
    pub group: String,
    pub hook: String,
    pub instance: String,
    /// `CONTINUE` or `ABANDON`, for a completion.
    pub result: Option<String>,
    /// Whether a pending action was there to take it.
    pub accepted: bool,
}

#[derive(Default)]
struct Book {
    /// Instance id → (group, hook) of the action pending for it.
    pending: BTreeMap<String, (String, String)>,
    calls: Vec<Call>,
}

#[derive(Clone, Default)]
pub struct Lifecycle {
    book: Arc<Mutex<Book>>,
}

impl Lifecycle {
    fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Auto Scaling holds `instance` in a wait state for `hook` of `group`.
    pub fn hold(&self, instance: &str, group: &str, hook: &str) {
        self.book()
            .pending
            .insert(instance.to_owned(), (group.to_owned(), hook.to_owned()));
    }

    /// Every call answered so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.book().calls.clone()
    }

    /// The result `instance`'s pending action was completed with, if it was.
    pub fn completed(&self, instance: &str) -> Option<String> {
        (self.calls().into_iter())
            .filter(|c| c.accepted && c.instance == instance)
            .find_map(|c| c.result)
    }

    pub fn front(&self) -> Arc<dyn Front> {
        Arc::new(self.clone())
    }
}

fn xml(action: &str) -> Answer {
    Answer {
        status: 200,
        content_type: "text/xml",
        headers: Vec::new(),
        body: format!(
            "<{action}Response xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
             <{action}Result/><ResponseMetadata><RequestId>a5c00000-0000-4000-8000-000000000000\
             </RequestId></ResponseMetadata></{action}Response>"
        ),
    }
}

fn validation_error(message: &str) -> Answer {
    Answer {
        status: 400,
        content_type: "text/xml",
        headers: Vec::new(),
        body: format!(
            "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error>\
             <Type>Sender</Type><Code>ValidationError</Code><Message>{message}</Message></Error>\
             <RequestId>a5c00000-0000-4000-8000-000000000001</RequestId></ErrorResponse>"
        ),
    }
}

impl Front for Lifecycle {
    fn answer(&self, request: &Request) -> Option<Answer> {
        let signed = request.header("authorization")?;
        if !signed.contains("/autoscaling/aws4_request") {
            return None;
        }
        let action = request.param("Action")?;
        let result = match action.as_str() {
            "CompleteLifecycleAction" => request.param("LifecycleActionResult"),
            "RecordLifecycleActionHeartbeat" => None,
            _ => return None,
        };
        let param = |name: &str| request.param(name).unwrap_or_default();
        let (group, hook, instance) = (
            param("AutoScalingGroupName"),
            param("LifecycleHookName"),
            param("InstanceId"),
        );
        let mut book = self.book();
        let pending = book.pending.get(&instance) == Some(&(group.clone(), hook.clone()));
        if pending && action == "CompleteLifecycleAction" {
            book.pending.remove(&instance);
        }
        book.calls.push(Call {
            at: Instant::now(),
            action: action.clone(),
            group,
            hook,
            instance: instance.clone(),
            result,
            accepted: pending,
        });
        Some(match pending {
            true => xml(&action),
            false => validation_error(&format!(
                "No active Lifecycle Action found with instance ID {instance}"
            )),
        })
    }
}

/// A lifecycle hook in moto (`PutLifecycleHook`), so that `DescribeLifecycleHooks` gives its
/// heartbeat timeout.
pub fn put_lifecycle_hook(group: &str, hook: &str, transition: &str, heartbeat_seconds: u64) {
    crate::Moto::shared().query(
        "autoscaling",
        &format!(
            "Action=PutLifecycleHook&Version=2011-01-01&AutoScalingGroupName={group}\
             &LifecycleHookName={hook}&LifecycleTransition={transition}\
             &HeartbeatTimeout={heartbeat_seconds}&DefaultResult=ABANDON"
        ),
    );
}

/// An Auto Scaling group `name` in moto with one instance (from a launch configuration of one
/// of moto's images); returns the instance's id, which `DescribeAutoScalingInstances` places in
/// the group.
pub fn create_group_with_one_instance(name: &str) -> String {
    let moto = crate::Moto::shared();
    let images = moto.query("ec2", "Action=DescribeImages&Version=2016-11-15");
    let image = between(&images, "<imageId>", "</imageId>")
        .unwrap_or_else(|| panic!("moto: DescribeImages gave no image: {images}"));
    moto.query(
        "autoscaling",
        &format!(
            "Action=CreateLaunchConfiguration&Version=2011-01-01&LaunchConfigurationName={name}\
             &ImageId={image}&InstanceType=t3.micro"
        ),
    );
    moto.query(
        "autoscaling",
        &format!(
            "Action=CreateAutoScalingGroup&Version=2011-01-01&AutoScalingGroupName={name}\
             &LaunchConfigurationName={name}&MinSize=1&MaxSize=1&DesiredCapacity=1\
             &AvailabilityZones.member.1=us-east-1a"
        ),
    );
    let found = moto.query(
        "autoscaling",
        &format!(
            "Action=DescribeAutoScalingGroups&Version=2011-01-01\
             &AutoScalingGroupNames.member.1={name}"
        ),
    );
    between(&found, "<InstanceId>", "</InstanceId>")
        .unwrap_or_else(|| panic!("moto: group {name} has no instance: {found}"))
}

/// The text between the first `open` and the `close` after it (of an XML answer).
pub(crate) fn between(text: &str, open: &str, close: &str) -> Option<String> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(text[start..end].trim().to_owned())
}
