//! `[loadbalancer]` through the real parts (issue 15): an instance booted from user-data, in a
//! target group of moto's, behind the harness's load balancer (`harness/elb.rs`: health checks,
//! draining and `DescribeTargetHealth` in front of moto). A deploy takes the instance out of the
//! group and waits for the drain before the restart, and puts it back after drover's health
//! gate, waiting until the load balancer finds it healthy; a release the load balancer finds
//! unhealthy is reverted like one that fails drover's own gate.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use drover_tests::elb::{create_target_group, Elb, Settings};
use drover_tests::faultproxy::FaultProxy;
use drover_tests::imds::Imds;
use drover_tests::{Instance, World};
use serde_json::Value;

const DEPLOY: Duration = Duration::from_secs(90);

fn at(event: &Value) -> u64 {
    event["__REALTIME_TIMESTAMP"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

fn ms(event: &Value) -> u64 {
    event["DURATION_MS"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The last `event` of the journal.
fn last(instance: &Instance, event: &str) -> Value {
    instance
        .journal_events(event)
        .pop()
        .unwrap_or_else(|| panic!("no {event} in the journal"))
}

struct Stage {
    world: World,
    elb: Elb,
    proxy: FaultProxy,
    group: String,
    imds: Imds,
    app_port: u16,
}

impl Stage {
    fn new(label: &str, settings: Settings) -> Stage {
        let world = World::new(label);
        let elb = Elb::start(settings);
        let proxy = FaultProxy::with_front(elb.front());
        let group = create_target_group(&world.name, Duration::from_secs(30));
        let imds = Imds::start(&format!("i-{:017x}", u64::from(world.app_port) * 7919));
        let app_port = drover_tests::free_port();
        Stage {
            world,
            elb,
            proxy,
            group,
            imds,
            app_port,
        }
    }

    /// Boots the instance, registered in the group already, with `[loadbalancer]` and the
    /// health gate on `health_path`.
    fn boot(&self, health_path: &str) -> Instance {
        let lb = format!(
            "[loadbalancer]\ntarget_groups = [\"{}\"]\nport = {}\n",
            self.group, self.app_port
        );
        let mut spec = self.world.member_spec(
            self.app_port,
            &self.imds.endpoint(),
            &self.proxy.endpoint(),
            &lb,
        );
        spec.config_toml = spec.config_toml.replace(
            &format!("127.0.0.1:{}/health", self.app_port),
            &format!("127.0.0.1:{}{health_path}", self.app_port),
        );
        self.elb
            .preregister(&self.group, self.imds.instance_id(), self.app_port);
        let mut instance = self.world.boot(spec);
        instance.app_port = self.app_port;
        instance
    }

    fn state(&self) -> &'static str {
        self.elb.state(&self.group, self.imds.instance_id())
    }
}

#[test]
fn a_deploy_drains_the_instance_before_the_restart_and_registers_it_after_the_gate() {
    let settings = Settings::default();
    let drain = settings.drain;
    let stage = Stage::new("lb-drain", settings);
    let instance = stage.boot("/health");

    stage.world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);
    assert_eq!(stage.state(), "healthy");
    let (started, drained, registered) = (
        last(&instance, "drain_started"),
        last(&instance, "drained"),
        last(&instance, "registered"),
    );
    assert_eq!(started["TARGET_GROUPS"], stage.group.as_str());
    // Drained once the load balancer said so: after its drain, within a poll (1 s) of it.
    let drained_ms = ms(&drained);
    assert!(
        drained_ms >= drain.as_millis() as u64 && drained_ms <= drain.as_millis() as u64 + 1500,
        "{drained}"
    );
    // In order: out, drained, restarted, drover's gate, back in.
    let restarted = last(&instance, "unit_restarted");
    let healthy = last(&instance, "health_passed");
    let switched = last(&instance, "switched");
    assert!(at(&drained) <= at(&switched), "drained before the switch");
    assert!(at(&switched) <= at(&restarted) && at(&healthy) <= at(&registered));
    let calls: Vec<&str> = stage.elb.calls().iter().map(|c| c.action).collect();
    assert_eq!(calls, ["DeregisterTargets", "RegisterTargets"]);

    // A release that fails drover's gate: out, the revert, back in with the good one.
    stage.world.release("2.0.0", false);
    instance.wait_for_events("reverted", 1, DEPLOY);
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(stage.state(), "healthy");
    assert_eq!(instance.journal_events("registered").len(), 2);
    let status = instance.status_json();
    assert!(status.get("out_of_service").is_none(), "{status}");
}

#[test]
fn a_release_the_load_balancer_finds_unhealthy_is_reverted() {
    let stage = Stage::new("lb-unhealthy", Settings::default());
    // drover's own gate asks /version, which the broken release still answers; the load
    // balancer checks /health, which it fails.
    let instance = stage.boot("/version");
    stage.world.release("1.0.0", true);
    instance.wait_for_events("deployed", 1, DEPLOY);

    stage.world.release("2.0.0", false);
    let reverted = instance.wait_for_events("reverted", 1, DEPLOY);
    let error = reverted[0]["ERROR"].as_str().unwrap_or_default();
    assert!(error.contains("is unhealthy after"), "{error}");
    assert!(error.contains(&stage.group), "{error}");
    assert_eq!(instance.served(), "1.0.0");
    assert_eq!(stage.state(), "healthy");
    let status = instance.status_json();
    assert_eq!(status["last"]["result"], "reverted");
    assert!(status.get("out_of_service").is_none(), "{status}");
}

/// `[fleet] max_in_flight = 1` on three instances in one target group.
const LEASE_TTL: Duration = Duration::from_secs(20);

struct Member {
    instance: Instance,
    imds: Imds,
}

/// The most instances out of their target group at once, from the calls moto accepted.
fn most_out_at_once(elb: &Elb) -> usize {
    let mut out = std::collections::BTreeSet::new();
    let mut most = 0;
    for call in elb.calls() {
        match call.action {
            "DeregisterTargets" => {
                out.insert(call.target);
            }
            _ => {
                out.remove(&call.target);
            }
        }
        most = most.max(out.len());
    }
    most
}

#[test]
fn at_most_one_instance_of_three_is_out_of_service_and_a_dead_holder_s_slot_frees_itself() {
    let stage = Stage::new("lb-lease", Settings::default());
    let fleet = format!(
        "[fleet]\nstatus_prefix = \"fleet/\"\nmax_in_flight = 1\nlease_ttl = \"{}s\"\n",
        LEASE_TTL.as_secs()
    );
    // The operator's `drover fleet status` reads the same prefix and shows the slots.
    let host_config = std::fs::read_to_string(stage.world.host_config()).unwrap();
    std::fs::write(stage.world.host_config(), format!("{host_config}\n{fleet}")).unwrap();
    let members: Vec<Member> = (0..3)
        .map(|n| {
            let imds = Imds::start(&format!("i-{:017x}", 0x1ea5e + n));
            let port = drover_tests::free_port();
            let lb = format!(
                "[loadbalancer]\ntarget_groups = [\"{}\"]\nport = {port}\n\n{fleet}",
                stage.group
            );
            let spec =
                stage
                    .world
                    .member_spec(port, &imds.endpoint(), &stage.proxy.endpoint(), &lb);
            stage
                .elb
                .preregister(&stage.group, imds.instance_id(), port);
            let mut instance = stage.world.boot(spec);
            instance.app_port = port;
            Member { instance, imds }
        })
        .collect();

    for (n, version) in ["1.0.0", "2.0.0"].iter().enumerate() {
        stage.world.release(version, true);
        for m in &members {
            m.instance.wait_for_events("deployed", n + 1, DEPLOY);
        }
    }
    assert_eq!(
        stage.elb.calls().len(),
        12,
        "each of three out and in, twice"
    );
    assert_eq!(most_out_at_once(&stage.elb), 1, "{:#?}", stage.elb.calls());
    let waited: usize = (members.iter())
        .map(|m| m.instance.journal_events("lease_waiting").len())
        .sum();
    assert!(waited > 0, "three instances, one slot: someone waited");
    let slot = stage
        .world
        .moto
        .get_object(&stage.world.bucket, "fleet/leases/slot-0.json")
        .expect("the slot's object");
    let lease: Value = serde_json::from_slice(&slot).unwrap();
    assert_eq!(
        lease["released"], true,
        "given back after the deploy: {lease}"
    );
    let status = stage.world.drover(&["fleet", "status", "2.0.0", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["leases"], serde_json::json!([]), "{status}");

    // The instance that takes the slot for 3.0.0 dies with it (stopped where it stands,
    // deregistered): the other two wait until its lease expires, then go one at a time.
    stage.world.release("3.0.0", true);
    let holder = drover_tests::wait_for(DEPLOY, "an instance to take the slot", || {
        members
            .iter()
            .position(|m| m.instance.journal_events("drain_started").len() == 3)
    });
    members[holder]
        .instance
        .exec_ok(&["systemctl", "kill", "--signal=SIGSTOP", "drover"]);
    let stopped_at = std::time::Instant::now();
    let status = stage.world.drover(&["fleet", "status", "3.0.0", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["leases"][0][1]["instance"],
        members[holder].imds.instance_id(),
        "{status}"
    );
    for (n, m) in members.iter().enumerate().filter(|(n, _)| *n != holder) {
        m.instance
            .wait_for_events("deployed", 3, DEPLOY + LEASE_TTL)
            .pop()
            .unwrap_or_else(|| panic!("member {n} deployed 3.0.0"));
    }
    assert!(
        stopped_at.elapsed() >= LEASE_TTL - Duration::from_secs(5),
        "the others waited for the dead holder's lease to expire: {:?}",
        stopped_at.elapsed()
    );
    members[holder]
        .instance
        .exec_ok(&["systemctl", "kill", "--signal=SIGCONT", "drover"]);
}
