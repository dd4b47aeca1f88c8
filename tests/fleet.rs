//! A fleet with real systemd: five instances, each a container booted from user-data with its
//! own instance id (an emulated IMDSv2 endpoint each, `harness/imds.rs`) and app port, all
//! writing status objects under one prefix of the bucket. A rollout in two waves puts an
//! unhealthy version on the canary alone; the canary reverts and reports the failure, and the
//! rest of the fleet, when its wave comes, holds by itself (`rollout_halted`), and the operator
//! sees it all in `drover fleet status`. Then a good version goes out in two waves, and the
//! operator stops that rollout by putting the previous version back: its canary switches back
//! without a download, and the rest never leave it.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use drover::version::Version;
use drover_tests::imds::Imds;
use drover_tests::{Boot, Instance, World};
use serde_json::Value;

const FLEET: usize = 5;
const PREFIX: &str = "fleet-status/";
/// When the second wave begins, after the put: time enough for the canary to fail and revert.
const SECOND_WAVE: &str = "40s";

struct Member {
    instance: Instance,
    imds: Imds,
    app_port: u16,
}

impl Member {
    fn id(&self) -> &str {
        self.imds.instance_id()
    }

    fn served(&self) -> Option<String> {
        let response = drover_tests::http::get(self.app_port, "/version").ok()?;
        (response.status == 200).then(|| response.text().trim().to_owned())
    }

    /// `EVENT=event` entries about `version`.
    fn events_about(&self, event: &str, version: &str) -> Vec<Value> {
        (self.instance.journal_events(event).into_iter())
            .filter(|e| e["VERSION"] == version)
            .collect()
    }
}

/// The normal boot with this member's app port, IMDS endpoint and `[fleet]` status objects.
fn spec(world: &World, imds: &Imds, app_port: u16) -> Boot {
    let fleet = format!("[fleet]\nstatus_prefix = \"{PREFIX}\"\nmax_failures = 1\n");
    let mut spec = world.member_spec(app_port, &imds.endpoint(), &world.moto.endpoint(), &fleet);
    spec.config_toml = spec
        .config_toml
        .replace("timeout = \"10s\"", "timeout = \"5s\"");
    spec
}

fn fleet_status(world: &World, version: &str) -> Value {
    let out = world.drover(&["fleet", "status", version, "--json"]);
    assert!(
        out.status.success(),
        "drover fleet status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fleet status --json is JSON")
}

#[test]
fn a_failing_canary_halts_the_rest_of_the_fleet() {
    let world = World::new("fleet");
    let host_config = std::fs::read_to_string(world.host_config()).unwrap();
    std::fs::write(
        world.host_config(),
        format!("{host_config}\n[fleet]\nstatus_prefix = \"{PREFIX}\"\n"),
    )
    .unwrap();
    world.release("1.0.0", true);

    let specs: Vec<(Imds, u16)> = (0..FLEET)
        .map(|n| {
            (
                Imds::start(&format!("i-0f1ee70000000000{n}")),
                drover_tests::free_port(),
            )
        })
        .collect();
    let fleet: Vec<Member> = std::thread::scope(|scope| {
        let booting: Vec<_> = (specs.into_iter())
            .map(|(imds, app_port)| {
                let world = &world;
                scope.spawn(move || Member {
                    instance: world.boot(spec(world, &imds, app_port)),
                    imds,
                    app_port,
                })
            })
            .collect();
        booting.into_iter().map(|b| b.join().unwrap()).collect()
    });
    for member in &fleet {
        member
            .instance
            .wait_for_events("deployed", 1, Duration::from_secs(90));
        assert_eq!(member.served().as_deref(), Some("1.0.0"), "{}", member.id());
    }
    // Each instance writes its status object right after the pass that deployed.
    drover_tests::wait_for(Duration::from_secs(10), "five reports of 1.0.0", || {
        (fleet_status(&world, "1.0.0")["on_version"] == FLEET).then_some(())
    });

    // 2.0.0 fails its health check everywhere; the first wave holds exactly one instance.
    world.publish("2.0.0", &world.app_tarball("2.0.0", false));
    let ((canary, cut), rest) = split_by_position(&fleet, "2.0.0");
    let rollout = format!(
        r#"{{"waves": [{{"fraction": {cut}, "after": "0s"}}, {{"fraction": 1, "after": "{SECOND_WAVE}"}}]}}"#
    );
    let out = world.drover(&["promote", "2.0.0", "--rollout", &rollout]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, request) = world.moto.get_parameter(&world.parameter).unwrap();

    // The rest see their turn is not yet come, once each.
    for member in &rest {
        let waiting =
            member
                .instance
                .wait_for_events("rollout_waiting", 1, Duration::from_secs(20));
        assert_eq!(waiting[0]["VERSION"], "2.0.0");
        assert!(
            waiting[0]["POSITION"].as_str().is_some(),
            "{:#}",
            waiting[0]
        );
    }
    // The canary deploys, fails, reverts and leaves its failure where the fleet looks.
    canary
        .instance
        .wait_for_events("reverted", 1, Duration::from_secs(60));
    assert_eq!(canary.served().as_deref(), Some("1.0.0"));
    let failure_key = format!("{PREFIX}failures/2.0.0/{request}/{}.json", canary.id());
    let failure: Value = serde_json::from_slice(
        &world
            .moto
            .get_object(&world.bucket, &failure_key)
            .unwrap_or_else(|| panic!("no failure object at {failure_key}")),
    )
    .unwrap();
    assert_eq!(failure["outcome"], "reverted", "{failure:#}");
    assert_eq!(failure["running"], "1.0.0", "{failure:#}");

    // When the second wave comes, every other instance counts one failure and holds.
    for member in &rest {
        let halted = member
            .instance
            .wait_for_events("rollout_halted", 1, Duration::from_secs(90));
        assert_eq!(halted[0]["VERSION"], "2.0.0", "{:#}", halted[0]);
        assert_eq!(halted[0]["FAILURES"], "1", "{:#}", halted[0]);
        assert!(
            member.events_about("deploy_started", "2.0.0").is_empty(),
            "{} started 2.0.0",
            member.id()
        );
        assert_eq!(member.served().as_deref(), Some("1.0.0"), "{}", member.id());
        assert_eq!(
            member.instance.current_release().unwrap(),
            std::path::Path::new("releases/1.0.0")
        );
    }
    // Once, not every poll.
    std::thread::sleep(Duration::from_secs(3));
    for member in &rest {
        assert_eq!(member.instance.journal_events("rollout_halted").len(), 1);
    }

    let status = drover_tests::wait_for(
        Duration::from_secs(20),
        "every halt in the status objects",
        || {
            let s = fleet_status(&world, "2.0.0");
            (s["halted"] == FLEET - 1).then_some(s)
        },
    );
    eprintln!("{status:#}");
    assert_eq!(status["instances"], FLEET);
    assert_eq!(status["on_version"], 0);
    assert_eq!(status["running"]["1.0.0"], FLEET);
    let failed = status["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["instance"], canary.id());
    let text = world.drover(&["fleet", "status", "2.0.0"]);
    let text = String::from_utf8_lossy(&text.stdout);
    eprintln!("{text}");
    assert!(
        text.contains(&format!("{} reverted", canary.id())),
        "{text}"
    );

    // A good 3.0.0 in two waves, the second far off: its canary (another instance: positions
    // change with the version) adopts it and the rest wait. The operator stops the rollout by
    // putting the previous version back, and the canary switches back without a download.
    world.publish("3.0.0", &world.app_tarball("3.0.0", true));
    let (canary, rest) = split_by_position(&fleet, "3.0.0");
    let cut = canary.1;
    let rollout = format!(
        r#"{{"waves": [{{"fraction": {cut}, "after": "0s"}}, {{"fraction": 1, "after": "1h"}}]}}"#
    );
    let out = world.drover(&["promote", "3.0.0", "--rollout", &rollout]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let canary = canary.0;
    drover_tests::wait_for(Duration::from_secs(60), "the canary on 3.0.0", || {
        (canary.served().as_deref() == Some("3.0.0")).then_some(())
    });
    for member in &rest {
        drover_tests::wait_for(
            Duration::from_secs(20),
            "the rest waiting for 3.0.0",
            || (!member.events_about("rollout_waiting", "3.0.0").is_empty()).then_some(()),
        );
        assert_eq!(member.served().as_deref(), Some("1.0.0"), "{}", member.id());
    }
    // Its status object says so once the deploy's pass has ended (after the health check).
    drover_tests::wait_for(
        Duration::from_secs(20),
        "the canary's report of 3.0.0",
        || (fleet_status(&world, "3.0.0")["on_version"] == 1).then_some(()),
    );
    let downloads = canary.events_about("artifact_verified", "1.0.0").len();
    world.promote("1.0.0");
    drover_tests::wait_for(
        Duration::from_secs(30),
        "the whole fleet back on 1.0.0",
        || {
            let s = fleet_status(&world, "1.0.0");
            (s["on_version"] == FLEET).then_some(())
        },
    );
    assert_eq!(
        canary.events_about("artifact_verified", "1.0.0").len(),
        downloads,
        "the canary downloaded 1.0.0 again"
    );
    for member in &fleet {
        assert_eq!(
            member.served().as_deref(),
            Some("1.0.0"),
            "{}: {}",
            member.id(),
            member.instance.container.journal_text("drover.service")
        );
        assert!(member.imds.gets() >= 1, "{} never asked IMDS", member.id());
        assert!(
            member.events_about("deploy_started", "3.0.0").len() <= 1,
            "{}",
            member.id()
        );
    }
}

/// The member first in the rollout of `version`, with a fraction that holds it alone, and the
/// rest.
fn split_by_position<'a>(
    fleet: &'a [Member],
    version: &str,
) -> ((&'a Member, f64), Vec<&'a Member>) {
    let version = Version::parse(version).unwrap();
    let mut by_position: Vec<(f64, &Member)> = (fleet.iter())
        .map(|m| (drover::rollout::position(m.id(), &version), m))
        .collect();
    by_position.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cut = (by_position[0].0 + by_position[1].0) / 2.0;
    eprintln!(
        "{version}: canary {} at {:.4}; the rest from {:.4}",
        by_position[0].1.id(),
        by_position[0].0,
        by_position[1].0
    );
    let rest = by_position[1..].iter().map(|(_, m)| *m).collect();
    ((by_position[0].1, cut), rest)
}
