//! `[autoscaling]` lifecycle hooks through the real parts (issue 15): an instance booted from
//! user-data, told by the emulated IMDS where Auto Scaling is taking it
//! (`autoscaling/target-lifecycle-state`) and which group it is in (its instance tags). moto keeps
//! the lifecycle hooks (`PutLifecycleHook`, `DescribeLifecycleHooks`); the harness answers the
//! two calls moto lacks, `CompleteLifecycleAction` and `RecordLifecycleActionHeartbeat`, in
//! front of it (`harness/autoscaling.rs`), and records them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use drover_tests::autoscaling::{create_group_with_one_instance, put_lifecycle_hook, Lifecycle};
use drover_tests::elb::{create_target_group, Elb, Settings};
use drover_tests::faultproxy::{Fault, FaultProxy, Front, Match};
use drover_tests::imds::Imds;
use drover_tests::{Instance, World};
use serde_json::Value;

const DEPLOY: Duration = Duration::from_secs(90);
const LAUNCH: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
const TERMINATE: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

struct Stage {
    world: World,
    lifecycle: Lifecycle,
    elb: Elb,
    proxy: FaultProxy,
    imds: Imds,
    group: String,
    app_port: u16,
}

impl Stage {
    /// An instance of the Auto Scaling group `asg-{label}`, on its way to `target`, which
    /// finds its group in its instance tags.
    fn new(label: &str, target: &str) -> Stage {
        Stage::with_group(label, target, false)
    }

    /// With `in_moto`, the group and its instance are moto's, and the instance's tags are not
    /// in its metadata (EC2's default): drover asks `DescribeAutoScalingInstances`.
    fn with_group(label: &str, target: &str, in_moto: bool) -> Stage {
        let world = World::new(label);
        let lifecycle = Lifecycle::default();
        let elb = Elb::start(Settings::default());
        let fronts: Vec<Arc<dyn Front>> = vec![lifecycle.front(), elb.front()];
        let proxy = FaultProxy::with_front(Arc::new(fronts));
        let group = format!("asg-{}", world.name);
        let id = match in_moto {
            true => create_group_with_one_instance(&group),
            false => format!("i-{:017x}", 0xa5c_0000 + u64::from(world.app_port)),
        };
        let imds = Imds::start(&id);
        imds.set("autoscaling/target-lifecycle-state", target);
        if !in_moto {
            imds.set("tags/instance/aws:autoscaling:groupName", &group);
        }
        Stage {
            app_port: drover_tests::free_port(),
            world,
            lifecycle,
            elb,
            proxy,
            imds,
            group,
        }
    }

    fn id(&self) -> &str {
        self.imds.instance_id()
    }

    fn boot(&self, extra: &str) -> Instance {
        let config = format!(
            "[autoscaling]\nlaunch_hook = \"launch\"\nterminate_hook = \"terminate\"\n\n{extra}"
        );
        let spec = self.world.member_spec(
            self.app_port,
            &self.imds.endpoint(),
            &self.proxy.endpoint(),
            &config,
        );
        let mut instance = self.world.boot(spec);
        instance.app_port = self.app_port;
        instance
    }

    fn wait_completed(&self, instance: &Instance, n: usize) -> Value {
        instance
            .wait_for_events("lifecycle_completed", n, DEPLOY)
            .swap_remove(n - 1)
    }
}

#[test]
fn a_scale_out_instance_continues_its_launch_only_once_healthy_with_heartbeats_meanwhile() {
    let stage = Stage::new("asg-launch", "InService");
    // A 15 s heartbeat timeout: drover beats every 5 s, and the first download is slowed to
    // 12 s, so the hook would time out without them.
    put_lifecycle_hook(&stage.group, "launch", LAUNCH, 15);
    stage.lifecycle.hold(stage.id(), &stage.group, "launch");
    stage.proxy.inject(
        Match::s3_get(".tar.gz"),
        Fault::Slow(Duration::from_secs(12)),
        1,
    );
    stage.world.release("1.0.0", true);
    let instance = stage.boot("");

    let completed = stage.wait_completed(&instance, 1);
    assert_eq!(completed["RESULT"], "CONTINUE");
    assert_eq!(completed["LIFECYCLE_HOOK"], "launch");
    assert_eq!(
        stage.lifecycle.completed(stage.id()).as_deref(),
        Some("CONTINUE")
    );
    // Completed after the release was healthy and committed, not before.
    let deployed = instance.wait_for_events("deployed", 1, DEPLOY);
    let at = |e: &Value| {
        e["__REALTIME_TIMESTAMP"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(at(&deployed[0]) <= at(&completed));
    let calls = stage.lifecycle.calls();
    let beats = calls
        .iter()
        .filter(|c| c.action == "RecordLifecycleActionHeartbeat" && c.accepted)
        .count();
    assert!(beats >= 2, "heartbeats while the download ran: {calls:#?}");
    assert_eq!(instance.served(), "1.0.0");

    // Completed once: a later pass leaves the hook alone.
    std::thread::sleep(Duration::from_secs(3));
    let completions = (stage.lifecycle.calls().into_iter())
        .filter(|c| c.action == "CompleteLifecycleAction")
        .count();
    assert_eq!(completions, 1);
}

#[test]
fn a_broken_desired_version_abandons_the_launch() {
    // The group is moto's, found with DescribeAutoScalingInstances: the completion names it.
    let stage = Stage::with_group("asg-abandon", "InService", true);
    put_lifecycle_hook(&stage.group, "launch", LAUNCH, 300);
    stage.lifecycle.hold(stage.id(), &stage.group, "launch");
    stage.world.release("1.0.0", false);
    let instance = stage.boot("");
    let completed = stage.wait_completed(&instance, 1);
    assert_eq!(completed["RESULT"], "ABANDON");
    assert_eq!(
        stage.lifecycle.completed(stage.id()).as_deref(),
        Some("ABANDON")
    );
    assert_eq!(instance.journal_events("revert_failed").len(), 1);
}

#[test]
fn a_warm_pool_instance_completes_its_hook_and_checks_the_desired_version_again_going_in() {
    let stage = Stage::new("asg-warm", "Warmed:Stopped");
    put_lifecycle_hook(&stage.group, "launch", LAUNCH, 300);
    stage.lifecycle.hold(stage.id(), &stage.group, "launch");
    stage.world.release("1.0.0", true);
    let instance = stage.boot("");
    let warmed = stage.wait_completed(&instance, 1);
    assert_eq!(warmed["RESULT"], "CONTINUE");
    assert!(warmed["MESSAGE"]
        .as_str()
        .unwrap()
        .contains("Warmed:Stopped"));

    // Out of the pool, into service, with a newer version asked for meanwhile.
    stage.world.release("2.0.0", true);
    instance.wait_for_events("deployed", 2, DEPLOY);
    stage.lifecycle.hold(stage.id(), &stage.group, "launch");
    stage
        .imds
        .set("autoscaling/target-lifecycle-state", "InService");
    let in_service = stage.wait_completed(&instance, 2);
    assert_eq!(in_service["RESULT"], "CONTINUE");
    assert!(in_service["MESSAGE"]
        .as_str()
        .unwrap()
        .contains("InService"));
    assert_eq!(instance.served(), "2.0.0");
}

#[test]
fn a_scale_in_instance_runs_pre_stop_drains_and_then_completes_its_hook() {
    let stage = Stage::new("asg-scale-in", "InService");
    put_lifecycle_hook(&stage.group, "launch", LAUNCH, 300);
    put_lifecycle_hook(&stage.group, "terminate", TERMINATE, 300);
    let group = create_target_group(&stage.world.name, Duration::from_secs(30));
    let lb = format!(
        "[loadbalancer]\ntarget_groups = [\"{group}\"]\nport = {}\n",
        stage.app_port
    );
    stage.elb.preregister(&group, stage.id(), stage.app_port);
    let v1 = stage
        .world
        .release_dir_with_hooks("1.0.0", &[("pre-stop", "echo $DROVER_HOOK $VERSION")]);
    stage.world.publish("1.0.0", &v1);
    stage.world.promote("1.0.0");
    // In service already: no launch action is pending, and Auto Scaling says so when drover
    // tries to complete one.
    let instance = stage.boot(&lb);
    instance.wait_for_events("deployed", 1, DEPLOY);

    stage.lifecycle.hold(stage.id(), &stage.group, "terminate");
    stage
        .imds
        .set("autoscaling/target-lifecycle-state", "Terminated");
    let completed = stage.wait_completed(&instance, 1);
    assert_eq!(completed["RESULT"], "CONTINUE");
    assert_eq!(completed["LIFECYCLE_HOOK"], "terminate");
    let said: Vec<String> = (instance.journal_events("hook_output").iter())
        .filter(|e| e["HOOK"] == "pre-stop")
        .map(|e| e["MESSAGE"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(said, ["pre-stop 1.0.0"]);
    // Deregistered and drained before the hook was completed, and not registered again.
    assert_eq!(stage.elb.state(&group, stage.id()), "unused");
    let drained = instance.journal_events("drained");
    let at = |e: &Value| {
        e["__REALTIME_TIMESTAMP"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(at(drained.last().unwrap()) <= at(&completed));
    let first = stage.lifecycle.calls();
    assert_eq!(first.iter().filter(|c| c.accepted).count(), 1, "{first:#?}");

    // On its way out nothing is deployed any more.
    stage.world.release("2.0.0", true);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(instance.journal_events("deploy_started").len(), 1);
}
